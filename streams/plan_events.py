"""MAESTRO's decision journal (the PLANS stream): proposed, refused, ratified, allocated, revised.

Goals, offers and plans ride as JSON bytes: the schemas they follow belong to maestro, and the
journal must stay readable by any version that knows these tags.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from streams.replies import Refusal

__all__ = [
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


class PlanRefused(PlanEventBase, frozen=True, tag="maestro.plan.refused"):
    plan_id: str
    reasons: tuple[Refusal, ...]
    goal: bytes = b""


class PlanRatified(PlanEventBase, frozen=True, tag="maestro.plan.ratified"):
    plan_id: str
    approved: bool
    by: str  # the DID of the caller holding maestro:ratify
    note: str = ""


class PlanAllocated(PlanEventBase, frozen=True, tag="maestro.plan.allocated"):
    plan_id: str
    workflow_id: str
    orders: tuple[bytes, ...]  # signed binding work orders (DSSE envelopes from MAESTRO's key)


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
    PlanProposed | PlanRefused | PlanRatified | PlanAllocated | PlanRevised | RevisionRefused
)


class PlanBatch(msgspec.Struct, frozen=True):
    """One PLANS message: the id of the request that caused it and its events."""

    command_id: str
    events: list[PlanEvent]


_KINDS: dict[type, str] = {
    PlanProposed: "proposed", PlanRefused: "refused", PlanRatified: "ratified",
    PlanAllocated: "allocated", PlanRevised: "revised", RevisionRefused: "revision_refused",
}


def plan_kind(events: list[PlanEvent]) -> str:
    return _KINDS[type(events[-1])]
