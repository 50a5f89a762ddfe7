"""What the engine sends after a decision, read off the state: work orders and timers. Pure."""

from __future__ import annotations

from moon.state import IN_FLIGHT, WorkflowState, is_terminal
from streams.moon_events import (
    CompensationScheduled,
    MoonEvent,
    StepScheduled,
    TimerRequest,
    WorkOrder,
)
from streams.tracing import attempt_traceparent

__all__ = ["due_timers", "order_keys", "pending_timers", "wake_at", "work_orders"]


def work_orders(state: WorkflowState, events: list[MoonEvent]) -> list[WorkOrder]:
    """Orders for the attempts `events` scheduled, read from the state after them."""
    if is_terminal(state):
        return []
    orders: list[WorkOrder] = []
    for event in events:
        if not isinstance(event, StepScheduled | CompensationScheduled):
            continue
        s = state.steps[event.step]
        if s.attempt != event.attempt or s.status not in IN_FLIGHT:
            continue
        undo = isinstance(event, CompensationScheduled)
        capability = event.capability if isinstance(event, CompensationScheduled) else None
        inputs = (
            {event.step: s.result or b""}
            if undo
            else {dep: state.steps[dep].result or b"" for dep in s.needs}
        )
        orders.append(
            WorkOrder(
                workflow_id=state.workflow_id,
                step=event.step,
                attempt=event.attempt,
                capability=capability or s.spec.capability,
                executor=s.executor,
                deadline_ms=event.at_ms + s.spec.timeout_ms,
                timeout_ms=s.spec.timeout_ms,
                idempotency_key=f"{state.workflow_id}/{event.step}/{event.attempt}",
                checkpoint=s.checkpoint,
                input=inputs,
                params=s.spec.params,
                compensation=undo,
                heartbeat_timeout_ms=s.spec.heartbeat_timeout_ms,
                plan_revision=state.plan_revision,
                traceparent=attempt_traceparent(state.workflow_id, _trace(state), event.step,
                                                event.attempt),
            )
        )
    return orders


def _trace(state: WorkflowState) -> str | None:
    return state.dispatched.traceparent if state.dispatched is not None else None


def order_key(workflow_id: str, step: str, attempt: int, *, compensation: bool) -> str:
    """An order's `Nats-Msg-Id`: one per attempt, a compensation's apart from the step's."""
    return f"{'undo:' if compensation else ''}{workflow_id}/{step}/{attempt}"


def order_keys(state: WorkflowState) -> list[str]:
    """The keys of the orders the state's in-flight attempts were sent (queued or taken)."""
    return [order_key(state.workflow_id, name, s.attempt, compensation=s.status == "compensating")
            for name, s in state.steps.items() if s.status in IN_FLIGHT and s.attempt]


def pending_timers(state: WorkflowState) -> list[TimerRequest]:
    """Every timer the state waits on, as `timers` asked for it when deciding.

    For a command that comes back after a crash: its first handling may have journaled the
    decision and died before the timers reached the server, and without a timer a step in
    backoff waits forever. Arming one twice is harmless: both firings carry the same command id
    (kind, step, attempt, due time), and the second is decided as a duplicate.
    """
    if is_terminal(state):
        return []
    wf = state.workflow_id
    out: list[TimerRequest] = []
    if state.deadline_ms is not None and state.status == "running" and not state.late:
        out.append(TimerRequest(workflow_id=wf, kind="workflow_deadline",
                                at_ms=state.deadline_ms))
    for name, s in state.steps.items():
        if s.status in IN_FLIGHT and s.scheduled_at is not None:
            out.append(TimerRequest(workflow_id=wf, kind="step_timeout",
                                    at_ms=s.scheduled_at + s.spec.timeout_ms, step=name,
                                    attempt=s.attempt))
            window = s.spec.heartbeat_timeout_ms
            if window is not None and s.heartbeat_at is not None:
                out.append(TimerRequest(workflow_id=wf, kind="heartbeat_timeout",
                                        at_ms=s.heartbeat_at + window, step=name,
                                        attempt=s.attempt))
        elif s.status in ("backoff", "compensation_backoff") and s.retry_due_ms is not None:
            out.append(TimerRequest(workflow_id=wf, kind="retry_backoff", at_ms=s.retry_due_ms,
                                    step=name, attempt=s.attempt + 1))
    return out


def wake_at(state: WorkflowState, *, after_ms: int | None = None) -> int | None:
    """When the workflow next needs its engine without a command: the earliest timer it waits
    on (later than `after_ms`, if given), or None. The engine keeps one durable wake-up per
    workflow armed no later than this, instead of a schedule per timer."""
    due = [t.at_ms for t in pending_timers(state) if after_ms is None or t.at_ms > after_ms]
    return min(due, default=None)


def due_timers(state: WorkflowState, until_ms: int) -> list[TimerRequest]:
    """The timers a wake-up at `until_ms` fires, earliest first."""
    return sorted((t for t in pending_timers(state) if t.at_ms <= until_ms),
                  key=lambda t: t.at_ms)
