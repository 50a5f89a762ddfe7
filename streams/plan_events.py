"""MAESTRO's decision journal (the PLANS stream): proposed, refused, ratified, allocated, revised.

Goals, offers and plans ride as JSON bytes: the schemas they follow belong to maestro, and the
journal must stay readable by any version that knows these tags.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from streams.replies import Refusal

__all__ = [
    "AllocationRefused",
    "Foreign",
    "PlanAllocated",
    "PlanBatch",
    "PlanEvent",
    "PlanProposed",
    "PlanRatified",
    "PlanRefused",
    "PlanRevised",
    "RevisionRefused",
    "plan_kind",
]


class PlanEventBase(msgspec.Struct, frozen=True, tag_field="type"):
    at_ms: int


class PlanProposed(PlanEventBase, frozen=True, tag="maestro.plan.proposed"):
    plan_id: str
    goal: bytes  # Goal as JSON
    offers: bytes  # the offers it was planned against, as JSON
    plan: bytes  # Plan as JSON
    awaiting_ratification: bool = False
    reasons: tuple[Refusal, ...] = ()
    # Added later, hence last and defaulted: journals written before them still decode.
    bids: bytes = b""  # the executors' bids the plan used (contract net), as JSON; b"": none
    anticipation: bytes = b""  # backups, retry slack, p(on time) for this plan, as JSON
    owner: str = ""  # the DID of the caller that created the plan id: only it (or an admin) acts


class PlanRefused(PlanEventBase, frozen=True, tag="maestro.plan.refused"):
    plan_id: str
    reasons: tuple[Refusal, ...]
    goal: bytes = b""
    bids: bytes = b""  # the bids the refused attempt was priced with, as JSON; b"": none
    owner: str = ""  # a refused plan id stays its creator's


class PlanRatified(PlanEventBase, frozen=True, tag="maestro.plan.ratified"):
    plan_id: str
    approved: bool
    by: str  # the DID of the caller holding maestro:ratify
    note: str = ""


class PlanAllocated(PlanEventBase, frozen=True, tag="maestro.plan.allocated"):
    plan_id: str
    workflow_id: str
    orders: tuple[bytes, ...]  # signed binding work orders (DSSE envelopes from MAESTRO's key)
    awards: bytes = b""  # the awards the bidders acknowledged (binding), as JSON; b"": none


class AllocationRefused(PlanEventBase, frozen=True, tag="maestro.plan.allocation_refused"):
    """An executor declined its award (bid expired, capacity gone): nothing went to MOON.

    `awards` are the acknowledgements gathered before the refusal, kept as evidence; the plan
    stays `planned`, so a later allocate may try again (a transient refusal) or a new plan is made.
    """

    plan_id: str
    reasons: tuple[Refusal, ...]
    awards: bytes = b""


class PlanRevised(PlanEventBase, frozen=True, tag="maestro.plan.revised"):
    plan_id: str
    revision: int
    workflow_id: str
    why: str  # the deviation that caused it
    moved: dict[str, str]  # step -> "old -> new" executor
    plan: bytes  # the revision, as JSON
    previous: bytes  # the plan it replaces, kept as dissent


class RevisionRefused(PlanEventBase, frozen=True, tag="maestro.plan.revision_refused"):
    plan_id: str
    workflow_id: str
    why: str
    reasons: tuple[Refusal, ...]


PlanEvent: TypeAlias = (
    PlanProposed
    | PlanRefused
    | PlanRatified
    | PlanAllocated
    | PlanRevised
    | RevisionRefused
    | AllocationRefused
)


class PlanBatch(msgspec.Struct, frozen=True):
    """One PLANS message: the id of the request that caused it and its events.

    On the wire it is the body of a PLAN_DECISION statement signed by MAESTRO, and `after` is
    the stream sequence of the plan's previous message when it was appended (the optimistic
    concurrency check guarantees it): a copy of a genuine message appended anywhere else, or
    later, does not sit after the sequence it names, so a fold tells it from the original.
    """

    command_id: str
    events: list[PlanEvent]
    after: int = 0


class Foreign(msgspec.Struct, frozen=True):
    """A PLANS message MAESTRO did not write there: unsigned, signed by someone else, about
    another plan, or a copy out of place. Folded as nothing; `seq` names it."""

    seq: int
    detail: str


_KINDS: dict[type, str] = {
    PlanProposed: "proposed", PlanRefused: "refused", PlanRatified: "ratified",
    PlanAllocated: "allocated", PlanRevised: "revised", RevisionRefused: "revision_refused",
    AllocationRefused: "allocation_refused",
}


def plan_kind(events: list[PlanEvent]) -> str:
    return _KINDS[type(events[-1])]
