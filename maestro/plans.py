"""The plan decider: which plan transitions are allowed, as a pure fold over PLANS events."""

from __future__ import annotations

from typing import Literal, TypeAlias, assert_never

import msgspec

from streams.plan_events import (
    AllocationRefused,
    Foreign,
    PlanAllocated,
    PlanBatch,
    PlanEvent,
    PlanProposed,
    PlanRatified,
    PlanRefused,
    PlanRevised,
    RevisionRefused,
)
from streams.replies import Reason, Refusal

__all__ = [
    "PlanState",
    "Record",
    "apply",
    "decide",
    "evolve",
    "initial",
    "may_act",
    "may_allocate",
]

Status: TypeAlias = Literal[
    "none", "planned", "awaiting_ratification", "rejected", "refused", "allocated"
]


class PlanState(msgspec.Struct, frozen=True):
    plan_id: str = ""
    status: Status = "none"
    goal: bytes = b""
    offers: bytes = b""
    plan: bytes = b""
    workflow_id: str = ""
    revision: int = 0
    dissent: tuple[bytes, ...] = ()  # every plan a revision replaced
    seen: tuple[str, ...] = ()
    bids: bytes = b""  # JSON: the bids the plan was made with
    anticipation: bytes = b""  # JSON: backups and p(on time) of the proposed plan
    awards: bytes = b""  # JSON: the awards the executors acknowledged at allocation
    owner: str = ""  # the DID that created the plan id
    foreign: tuple[int, ...] = ()  # PLANS sequences of messages MAESTRO did not write here


initial = PlanState()


class Record(msgspec.Struct, frozen=True):
    """The command: MAESTRO's shell proposes events (solver output is data); decide checks them."""

    command_id: str
    events: tuple[PlanEvent, ...]
    caller: str = ""  # who asks; a new plan id becomes theirs
    admin: bool = False  # MAESTRO itself, or a caller holding the admin capability


def evolve(state: PlanState, event: PlanEvent) -> PlanState:
    replace = msgspec.structs.replace
    match event:
        case PlanProposed():
            status: Status = "awaiting_ratification" if event.awaiting_ratification else "planned"
            return replace(state, plan_id=event.plan_id, status=status, goal=event.goal,
                           offers=event.offers, plan=event.plan, bids=event.bids,
                           anticipation=event.anticipation, owner=event.owner)
        case PlanRefused():
            return replace(state, plan_id=event.plan_id, status="refused", goal=event.goal,
                           owner=event.owner)
        case PlanRatified(approved=approved):
            return replace(state, status="planned" if approved else "rejected")
        case PlanAllocated():
            return replace(state, status="allocated", workflow_id=event.workflow_id,
                           awards=event.awards)
        case PlanRevised():
            return replace(state, revision=event.revision, plan=event.plan,
                           dissent=(*state.dissent, event.previous))
        case RevisionRefused() | AllocationRefused():
            return state
        case _:
            assert_never(event)


def may_act(state: PlanState, caller: str, *, admin: bool) -> Refusal | None:
    """A plan id is its creator's: anyone else (but an admin) is refused before anything
    happens, and a new one is anybody's to take."""
    if admin or state.status == "none" or caller == state.owner:
        return None
    return Refusal(Reason.NOT_OWNER, f"plan {state.plan_id} belongs to another caller",
                   evidence={"plan": state.plan_id})


def may_allocate(state: PlanState) -> Refusal | None:
    """Whether the plan may be allocated now: the shell asks before it sends binding awards."""
    if state.status == "awaiting_ratification":
        return Refusal(Reason.AWAITING_RATIFICATION, state.plan_id)
    if state.status != "planned":
        return Refusal(Reason.INVALID_STATE, f"plan is {state.status}")
    return None


def _allowed(state: PlanState, event: PlanEvent) -> Refusal | None:
    match event:
        case PlanProposed() | PlanRefused():
            return None if state.status == "none" else Refusal(Reason.ALREADY_EXISTS, state.plan_id)
        case PlanRatified():
            if state.status != "awaiting_ratification":
                return Refusal(Reason.INVALID_STATE, f"plan is {state.status}, not awaiting")
            return None
        case PlanAllocated() | AllocationRefused():
            return may_allocate(state)
        case PlanRevised():
            if state.status != "allocated":
                return Refusal(Reason.INVALID_STATE, "only an allocated plan is revised")
            if event.revision != state.revision + 1:
                return Refusal(Reason.INVALID_STATE, f"revision {event.revision} after "
                               f"{state.revision}")
            return None
        case RevisionRefused():
            return None
        case _:
            assert_never(event)


def decide(command: Record, state: PlanState) -> list[PlanEvent] | Refusal:
    if (refusal := may_act(state, command.caller, admin=command.admin)) is not None:
        return refusal
    if command.command_id in state.seen:
        return []
    for event in command.events:
        if (refusal := _allowed(state, event)) is not None:
            return refusal
        state = evolve(state, event)
    return list(command.events)


def apply(state: PlanState, batch: PlanBatch | Foreign) -> PlanState:
    """Fold one PLANS message; one MAESTRO did not write is named, never folded."""
    if isinstance(batch, Foreign):
        return msgspec.structs.replace(state, foreign=(*state.foreign, batch.seq)[-64:])
    if batch.command_id in state.seen:
        return state  # the same decision twice (a copy): it happened once
    for event in batch.events:
        state = evolve(state, event)
    return msgspec.structs.replace(state, seen=(*state.seen, batch.command_id)[-256:])
