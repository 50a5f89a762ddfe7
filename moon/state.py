"""A workflow's state and how events change it (`evolve`). Pure.

`moon.workflow.decide` says what a command means as events; folding them here is all anyone
needs to know a workflow (the engine, replay, readers): the state is the fold of the journal.
"""

from __future__ import annotations

from typing import Literal, TypeAlias, assert_never

import msgspec

from streams.moon_events import (
    BudgetExhausted,
    CompensationFailed,
    CompensationScheduled,
    CompensationStarted,
    Decision,
    Deviation,
    Dispatched,
    MoonEvent,
    OnFailure,
    ReplanApplied,
    RetryScheduled,
    StepCheckpointed,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepHeartbeat,
    StepScheduled,
    StepSpec,
    StepStarted,
    StepTimedOut,
    Usage,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowFailed,
)

__all__ = [
    "BUSY",
    "IN_FLIGHT",
    "SEEN_LIMIT",
    "TERMINAL",
    "Outcome",
    "StepState",
    "StepStatus",
    "WorkflowState",
    "WorkflowStatus",
    "apply",
    "evolve",
    "initial",
    "is_terminal",
]

StepStatus: TypeAlias = Literal[
    "pending",
    "scheduled",
    "running",
    "backoff",
    "completed",
    "failed",
    "compensating",
    "compensation_backoff",
    "compensated",
    "compensation_failed",
]
WorkflowStatus: TypeAlias = Literal[
    "none", "running", "completed", "failed", "compensating", "compensated", "cancelled"
]
Outcome: TypeAlias = Literal["", "completed", "failed", "timed_out"]

# Per workflow; older duplicates are still caught by the attempt and revision checks.
SEEN_LIMIT = 512

IN_FLIGHT: frozenset[StepStatus] = frozenset({"scheduled", "running", "compensating"})
BUSY: frozenset[StepStatus] = IN_FLIGHT | {"compensation_backoff"}
TERMINAL: frozenset[WorkflowStatus] = frozenset(
    {"completed", "failed", "compensated", "cancelled"}
)


class StepState(msgspec.Struct, frozen=True):
    """One step as the journal tells it: where it is, which attempt, what it produced."""

    spec: StepSpec
    status: StepStatus = "pending"
    attempt: int = 0
    window_start: int = 1  # first attempt of the current retry window (a replan restarts it)
    executor: str | None = None
    scheduled_at: int | None = None
    started_at: int | None = None
    heartbeat_at: int | None = None
    checkpoint: bytes | None = None
    result: bytes | None = None
    usage: Usage = Usage()
    error: str = ""
    outcome: Outcome = ""  # of the current attempt
    # Where the plan sends this step (the dispatch or the latest replan); `executor` is who ran
    # the current attempt. Retries go to `assigned`: None means any executor of the capability.
    assigned: str | None = None
    retry_due_ms: int | None = None  # when the backoff ends (the last RetryScheduled's due time)
    start_id: str = ""  # the command id of the current attempt's journaled start

    @property
    def needs(self) -> tuple[str, ...]:
        return self.spec.needs


class WorkflowState(msgspec.Struct, frozen=True):
    """A workflow is nothing but this fold of its journal."""

    workflow_id: str = ""
    status: WorkflowStatus = "none"
    steps: dict[str, StepState] = {}
    dispatched: Dispatched | None = None
    deadline_ms: int | None = None
    budget_tokens: int | None = None
    plan_id: str | None = None
    plan_revision: int = 0
    on_failure: OnFailure = "wait"
    usage: Usage = Usage()
    halted: bool = False  # budget exhausted: nothing new is scheduled until a replan raises it
    late: bool = False
    seen: tuple[str, ...] = ()


initial = WorkflowState()

_replace = msgspec.structs.replace


# --- evolve ------------------------------------------------------------------------------------


def _step(state: WorkflowState, step: str, **changes: object) -> WorkflowState:
    return _replace(state, steps={**state.steps, step: _replace(state.steps[step], **changes)})


def _spent(state: WorkflowState, step: str, usage: Usage, **changes: object) -> WorkflowState:
    """An attempt ended: its usage counts for the step and the workflow, and the step changes."""
    s = state.steps[step]
    return _step(_replace(state, usage=state.usage + usage), step, usage=s.usage + usage,
                 **changes)


def evolve(state: WorkflowState, event: MoonEvent) -> WorkflowState:
    """Total and pure: the state after one event."""
    match event:
        case Dispatched():
            steps = {
                spec.id: StepState(spec=spec, executor=spec.executor, assigned=spec.executor)
                for spec in event.steps
            }
            usage = Usage()
            for carried in event.completed:
                steps[carried.step] = _replace(
                    steps[carried.step],
                    status="completed",
                    result=carried.result,
                    usage=carried.usage,
                    outcome="completed",
                )
                usage = usage + carried.usage
            return _replace(
                state,
                workflow_id=event.workflow_id,
                status="running",
                steps=steps,
                dispatched=event,
                deadline_ms=event.deadline_ms,
                budget_tokens=event.budget_tokens,
                plan_id=event.plan_id,
                plan_revision=event.plan_revision,
                on_failure=event.on_failure,
                usage=usage,
            )
        case StepScheduled():
            s = state.steps[event.step]
            return _step(
                state,
                event.step,
                status="scheduled",
                attempt=event.attempt,
                window_start=event.attempt if event.fresh or s.attempt == 0 else s.window_start,
                executor=event.executor,
                scheduled_at=event.at_ms,
                started_at=None,
                heartbeat_at=None,
                start_id="",
                error="",
                outcome="",
            )
        case StepStarted():
            s = state.steps[event.step]
            return _step(
                state,
                event.step,
                status="running" if s.status == "scheduled" else s.status,
                executor=event.executor,
                started_at=event.at_ms,
                heartbeat_at=event.at_ms,
                start_id=event.command_id,
            )
        case StepHeartbeat():
            return _step(state, event.step, heartbeat_at=event.at_ms)
        case StepCheckpointed():
            return _step(state, event.step, checkpoint=event.state, heartbeat_at=event.at_ms)
        case StepCompleted():
            return _spent(state, event.step, event.usage, status="completed",
                          result=event.result, outcome="completed")
        case StepFailed():
            return _spent(state, event.step, event.usage,
                          status="backoff" if event.will_retry else "failed", error=event.error,
                          outcome="failed")
        case RetryScheduled():
            # The preceding failure already moved the step to its backoff status; the due time
            # is kept so that a lost backoff timer can be armed again (pending_timers).
            return _step(state, event.step, retry_due_ms=event.due_ms)
        case StepTimedOut():
            return _step(
                state,
                event.step,
                status="backoff" if event.will_retry else "failed",
                error=f"{event.timer} at attempt {event.attempt}",
                outcome="timed_out",
            )
        case Deviation():
            if event.kind == "late" and not event.step:
                return _replace(state, late=True)
            return state
        case ReplanApplied():
            steps = dict(state.steps)
            for step, executor in event.assignments.items():
                steps[step] = _replace(steps[step], executor=executor, assigned=executor)
            budget = state.budget_tokens if event.budget_tokens is None else event.budget_tokens
            return _replace(
                state,
                steps=steps,
                plan_id=event.plan_id,
                plan_revision=event.revision,
                budget_tokens=budget,
                halted=budget is not None and state.usage.tokens > budget,
            )
        case BudgetExhausted():
            return _replace(state, halted=True)
        case CompensationStarted():
            # Retries waiting for their backoff are abandoned: nothing new runs forward.
            steps = {
                k: _replace(s, status="failed") if s.status == "backoff" else s
                for k, s in state.steps.items()
            }
            return _replace(state, status="compensating", steps=steps)
        case CompensationScheduled():
            s = state.steps[event.step]
            return _step(
                state,
                event.step,
                status="compensating",
                attempt=event.attempt,
                window_start=event.attempt if event.fresh else s.window_start,
                executor=event.executor,
                scheduled_at=event.at_ms,
                started_at=None,
                heartbeat_at=None,
                start_id="",
                checkpoint=None if event.fresh else s.checkpoint,
                error="",
                outcome="",
            )
        case StepCompensated():
            return _spent(state, event.step, event.usage, status="compensated",
                          outcome="completed")
        case CompensationFailed():
            return _spent(state, event.step, event.usage,
                          status="compensation_backoff" if event.will_retry
                          else "compensation_failed",
                          error=event.error, outcome="failed")
        case WorkflowCompleted():
            return _replace(state, status="completed")
        case WorkflowFailed():
            return _replace(state, status="failed")
        case WorkflowCompensated():
            return _replace(state, status="compensated")
        case WorkflowCancelled():
            return _replace(state, status="cancelled")
        case _:
            assert_never(event)


def apply(state: WorkflowState, decision: Decision) -> WorkflowState:
    """Fold one journal message: its events, then remember its command id for dedupe."""
    for event in decision.events:
        state = evolve(state, event)
    seen = (*state.seen, decision.command.command_id)[-SEEN_LIMIT:]
    return _replace(state, seen=seen)


def is_terminal(state: WorkflowState) -> bool:
    return state.status in TERMINAL
