"""Replay a recorded journal: fold it, prove it re-decides the same, compare states, fork. Pure.

Each journal message is a Decision (the command next to its events), so verification needs no
command stream: the work queue that carried the commands may have forgotten them long ago.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from moon.workflow import WorkflowState, apply, decide, initial
from streams.moon_events import CarriedStep, Decision, Dispatch, MoonEvent
from streams.replies import Refusal

__all__ = ["Change", "Mismatch", "diff", "fold", "fork", "verify"]


class Mismatch(msgspec.Struct, frozen=True):
    """A recorded decision today's decider would not make: non-determinism or a changed rule."""

    index: int  # position of the decision in the journal (0-based)
    command_id: str
    recorded: list[MoonEvent]
    decided: list[MoonEvent] | Refusal


class Change(msgspec.Struct, frozen=True):
    """One field that differs between two states; step is "" for the workflow itself."""

    step: str
    field: str
    before: str | int | bool | None
    after: str | int | bool | None


def fold(decisions: Iterable[Decision], state: WorkflowState = initial) -> WorkflowState:
    """The workflow state a journal (or its tail, from `state`) leads to."""
    for decision in decisions:
        state = apply(state, decision)
    return state


def verify(decisions: Iterable[Decision]) -> list[Mismatch]:
    """Re-decide every recorded command against the state before it; list what differs.

    The recorded events are folded either way, so one mismatch does not hide the later ones.
    """
    state, mismatches = initial, list[Mismatch]()
    for index, decision in enumerate(decisions):
        decided = decide(decision.command, state)
        if decided != decision.events:
            mismatches.append(
                Mismatch(
                    index=index,
                    command_id=decision.command.command_id,
                    recorded=decision.events,
                    decided=decided,
                )
            )
        state = apply(state, decision)
    return mismatches


_WORKFLOW_FIELDS = ("status", "plan_revision", "halted", "late")
_STEP_FIELDS = ("status", "attempt", "executor")


def diff(before: WorkflowState, after: WorkflowState) -> list[Change]:
    """What changed from `before` to `after`: workflow fields, per-step status/attempt/executor."""
    changes = [
        Change(step="", field=name, before=getattr(before, name), after=getattr(after, name))
        for name in _WORKFLOW_FIELDS
        if getattr(before, name) != getattr(after, name)
    ]
    if before.usage.tokens != after.usage.tokens:
        changes.append(Change("", "tokens", before.usage.tokens, after.usage.tokens))
    for step in [*before.steps, *(k for k in after.steps if k not in before.steps)]:
        old, new = before.steps.get(step), after.steps.get(step)
        for name in _STEP_FIELDS:
            was = None if old is None else getattr(old, name)
            now = None if new is None else getattr(new, name)
            if was != now:
                changes.append(Change(step=step, field=name, before=was, after=now))
    return changes


def fork(
    state: WorkflowState, new_workflow_id: str, at_ms: int, *, command_id: str | None = None
) -> Dispatch:
    """A Dispatch that starts a new workflow from `state`: completed steps carry their results."""
    first = state.dispatched
    if first is None:
        raise ValueError("cannot fork a workflow that was never dispatched")
    carried = tuple(
        CarriedStep(step=k, result=s.result or b"", usage=s.usage)
        for k, s in state.steps.items()
        if s.status == "completed"
    )
    # Executors follow the latest plan revision, not the first dispatch.
    steps = tuple(
        msgspec.structs.replace(s.spec, executor=s.executor) for s in state.steps.values()
    )
    return Dispatch(
        command_id=command_id or f"fork:{state.workflow_id}:{new_workflow_id}",
        workflow_id=new_workflow_id,
        at_ms=at_ms,
        steps=steps,
        deadline_ms=state.deadline_ms,
        budget_tokens=state.budget_tokens,
        plan_id=state.plan_id,
        plan_revision=state.plan_revision,
        on_failure=state.on_failure,
        completed=carried,
        forked_from=state.workflow_id,
    )
