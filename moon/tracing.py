"""A workflow's spans, read off its journal: what each journaled decision adds to the trace.

`spans(before, decision, seq)` is pure: the state the decision was decided on, the decision and
its journal sequence give the same spans with the same ids in any process, at any time. The
engine emits them once, when its runner appends the decision (`journaled`, the hook in
moon/journal.py); a fold (replay, verify, an engine's load, a follower) never calls the hook, and
a redelivered command decides nothing, so neither can add a span. `of_journal` rebuilds every
span of a journal, for a test to compare with what was emitted, or to export a trace again.

The shape of a workflow's trace (ids in streams/tracing.py):

    caller's span (Dispatched.traceparent)
    └─ moon.dispatch                 instant, emitted first: every later span hangs under it
       ├─ moon.attempt               one per attempt, scheduled -> outcome, "started" noted
       │                             (or -> superseded by a replan, abandoned by a cancel)
       │  ├─ moon.step               the executor's run of it (moon/worker.py)
       │  └─ moon.deviation          a deviation of that attempt
       ├─ moon.compensation          compensation begins (instant)
       ├─ moon.compensation.attempt  one per compensation attempt
       ├─ moon.replan                a revision applied (MAESTRO's maestro.replan is beside it)
       ├─ moon.deviation             of the workflow (its deadline)
       └─ moon.workflow              dispatch -> the end, with the status (again if a
                                     completed workflow is compensated later)

Parents are all emitted before their children except the attempt an executor's step runs in
(it ends after the step): no span waits for a parent that arrives only when the workflow ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Protocol, TypeVar

import structlog

from moon.workflow import StepState, WorkflowState, apply, evolve, initial
from streams import telemetry
from streams.moon_events import (
    BudgetExhausted,
    CompensationFailed,
    CompensationScheduled,
    CompensationStarted,
    Decision,
    Deviation,
    Dispatched,
    MoonEvent,
    ReplanApplied,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepScheduled,
    StepTimedOut,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowFailed,
    WorkOrder,
)
from streams.tracing import (
    Attribute,
    Parent,
    SpanNote,
    SpanRecord,
    attempt_span,
    derive_span_id,
    dispatch_span,
    parse_traceparent,
    workflow_parent,
)

__all__ = ["event_span", "journaled", "of_journal", "run_step", "spans", "step_span", "trace_of"]

T = TypeVar("T")

_MS = 1_000_000  # journal times are milliseconds, spans nanoseconds


class _Record(Protocol):
    def __call__(self, name: str, span_id: str, parent_id: str, start_ns: int,
                 attributes: dict[str, Attribute], *, error: str = "",
                 notes: tuple[SpanNote, ...] = ()) -> SpanRecord: ...


def trace_of(state: WorkflowState, event: MoonEvent | None = None) -> Parent:
    """The caller's span a workflow hangs under (its trace), from the journal alone."""
    dispatched = event if isinstance(event, Dispatched) else state.dispatched
    wf = dispatched.workflow_id if dispatched is not None else state.workflow_id
    return workflow_parent(wf, dispatched.traceparent if dispatched is not None else None)


def event_span(workflow_id: str, seq: int, index: int) -> str:
    """An instant span for the `index`-th event of the decision journaled at `seq`."""
    return derive_span_id("moon.event", workflow_id, seq, index)


def step_span(workflow_id: str, step: str, attempt: int) -> str:
    """The executor's run of an attempt (moon/worker.py): one per attempt, as only the start
    the journal holds runs."""
    return derive_span_id("moon.step", workflow_id, step, attempt)


def spans(before: WorkflowState, decision: Decision, seq: int) -> list[SpanRecord]:
    """The spans a decision completes, each read from the state just before its event."""
    found: list[SpanRecord] = []
    state = before
    for index, event in enumerate(decision.events):
        found.extend(_spans(state, event, seq, index))
        state = evolve(state, event)
    return found


def of_journal(decisions: Iterable[tuple[int, Decision]]) -> list[SpanRecord]:
    """Every span of a journal, from its (sequence, decision) pairs in order."""
    found: list[SpanRecord] = []
    state = initial
    for seq, decision in decisions:
        found.extend(spans(state, decision, seq))
        state = apply(state, decision)
    return found


def journaled(before: WorkflowState, decision: Decision, seq: int) -> None:
    """The runner's hook, called once per decision it appended: emit what it completed."""
    if telemetry.enabled():
        telemetry.emit(spans(before, decision, seq))


async def run_step(order: WorkOrder, executor: str, work: Awaitable[T]) -> T:
    """The worker's hook around a handler: its log lines name the workflow, the step and the
    trace, and its run is the `moon.step` span under the attempt the order names. Called only
    for the start the journal holds, so once per attempt."""
    wf, step, attempt = order.workflow_id, order.step, order.attempt
    parent = parse_traceparent(order.traceparent) or Parent(
        workflow_parent(wf, None).trace_id, attempt_span(wf, step, attempt))
    attributes: dict[str, Attribute] = {
        "moon.workflow_id": wf, "moon.step": step, "moon.attempt": attempt,
        "moon.executor": executor, "moon.capability": order.capability,
        "moon.compensation": order.compensation,
    }
    with structlog.contextvars.bound_contextvars(workflow_id=wf, step=step, attempt=attempt), \
            telemetry.timed("moon.step", step_span(wf, step, attempt), parent, kind="consumer",
                            auto_end=True, attributes=attributes):
        return await work


def _spans(state: WorkflowState, event: MoonEvent, seq: int, index: int) -> list[SpanRecord]:
    trace = trace_of(state, event)
    wf = event.workflow_id if isinstance(event, Dispatched) else state.workflow_id
    dispatch = dispatch_span(wf)
    at = event.at_ms * _MS

    def record(name: str, span_id: str, parent_id: str, start_ns: int,
               attributes: dict[str, Attribute], *, error: str = "",
               notes: tuple[SpanNote, ...] = ()) -> SpanRecord:
        return SpanRecord(name=name, trace_id=trace.trace_id, span_id=span_id,
                          parent_id=parent_id, start_ns=start_ns, end_ns=at, error=error,
                          attributes={"moon.workflow_id": wf, **attributes}, notes=notes,
                          sampled=trace.sampled)

    def instant(name: str, attributes: dict[str, Attribute], parent_id: str = dispatch
                ) -> SpanRecord:
        return record(name, event_span(wf, seq, index), parent_id, at, attributes)

    match event:
        case Dispatched():
            return [record("moon.dispatch", dispatch, trace.span_id, at, {
                "moon.steps": len(event.steps), "moon.plan_id": event.plan_id or "",
                "moon.plan_revision": event.plan_revision,
                "moon.forked_from": event.forked_from or ""})]
        case StepCompleted() | StepFailed() | StepTimedOut() | StepCompensated() | (
            CompensationFailed()
        ):
            s = state.steps.get(event.step)
            if s is None or s.attempt != event.attempt:
                return []  # not the attempt in hand: the decider journals no such event
            return [_attempt(record, wf, s, event)]
        case StepScheduled() | CompensationScheduled():
            # A replan that moves a step in flight schedules a fresh attempt: the old one
            # ends here, unreported (its executor's late report is stale and decides nothing).
            s = state.steps.get(event.step)
            if s is None or not s.attempt or s.attempt == event.attempt or (
                    s.status not in _IN_FLIGHT):
                return []
            return [_attempt(record, wf, s, event)]
        case Deviation():
            parent = attempt_span(wf, event.step, event.attempt) if event.step else dispatch
            return [instant("moon.deviation", {
                "moon.deviation": event.kind, "moon.step": event.step,
                "moon.attempt": event.attempt, "moon.executor": event.executor or "",
                "moon.detail": event.detail[:500]}, parent)]
        case ReplanApplied():
            return [instant("moon.replan", {
                "moon.plan_id": event.plan_id, "moon.plan_revision": event.revision,
                "moon.moved": len(event.assignments), "moon.reason": event.reason[:500]})]
        case CompensationStarted():
            return [instant("moon.compensation", {
                "moon.reason": event.reason[:500], "moon.steps": len(event.steps)})]
        case BudgetExhausted():
            return [instant("moon.budget_exhausted", {
                "moon.budget_tokens": event.budget_tokens, "moon.used_tokens": event.used_tokens})]
        case WorkflowCompleted() | WorkflowFailed() | WorkflowCompensated() | WorkflowCancelled():
            begun = state.dispatched.at_ms * _MS if state.dispatched is not None else at
            error = event.reason if isinstance(event, WorkflowFailed) else ""
            if isinstance(event, WorkflowCompensated) and event.failed:
                error = "compensations failed: " + ", ".join(event.failed)
            # By sequence: a completed workflow may still be compensated, and end again.
            ended = record("moon.workflow", derive_span_id("moon.workflow", wf, seq, index),
                           dispatch, begun, {"moon.status": _STATUS[type(event)],
                                             "moon.tokens": state.usage.tokens}, error=error)
            if not isinstance(event, WorkflowCancelled):
                return [ended]
            # Cancelled is final: the attempts in flight end with it (nothing they report counts).
            return [*(_attempt(record, wf, s, event) for s in state.steps.values()
                      if s.attempt and s.status in _IN_FLIGHT), ended]
        case _:
            return []  # scheduling, starts, heartbeats, checkpoints: parts of a span, not spans


_STATUS: dict[type, str] = {
    WorkflowCompleted: "completed", WorkflowFailed: "failed",
    WorkflowCompensated: "compensated", WorkflowCancelled: "cancelled",
}


_IN_FLIGHT = frozenset({"scheduled", "running", "compensating"})
_Ending = (StepCompleted | StepFailed | StepTimedOut | StepCompensated | CompensationFailed
           | StepScheduled | CompensationScheduled | WorkflowCancelled)


def _attempt(record: _Record, wf: str, s: StepState, event: _Ending) -> SpanRecord:
    """The span of the attempt `s` is in, ended by `event` (its outcome, or what cut it off)."""
    undo = isinstance(event, StepCompensated | CompensationFailed) or s.status == "compensating"
    notes = () if s.started_at is None else (
        SpanNote("started", s.started_at * _MS, {"moon.executor": s.executor or ""}),)
    error = ""
    attributes: dict[str, Attribute] = {
        "moon.step": s.spec.id, "moon.attempt": s.attempt, "moon.executor": s.executor or "",
        "moon.capability": (s.spec.compensation or "") if undo else s.spec.capability,
    }
    match event:
        case StepFailed() | CompensationFailed():
            error = event.error[:500]
            attributes["moon.will_retry"] = event.will_retry
        case StepTimedOut():
            error = event.timer
            attributes["moon.will_retry"] = event.will_retry
        case StepScheduled() | CompensationScheduled():
            error = f"superseded by attempt {event.attempt}"
        case WorkflowCancelled():
            error = "abandoned: the workflow was cancelled"
        case _:
            pass
    if isinstance(event, StepCompleted | StepFailed | StepCompensated | CompensationFailed):
        attributes |= {"moon.tokens": event.usage.tokens, "moon.wall_ms": event.usage.wall_ms}
    start = (s.scheduled_at if s.scheduled_at is not None else event.at_ms) * _MS
    return record("moon.compensation.attempt" if undo else "moon.attempt",
                  attempt_span(wf, s.spec.id, s.attempt), dispatch_span(wf), start, attributes,
                  error=error, notes=notes)
