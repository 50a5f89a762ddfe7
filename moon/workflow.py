"""The workflow decider: what a command means for a workflow, as events. Pure.

The engine shell reads the clock, makes ids and talks to NATS; everything it must decide goes
through `decide`, and everything it must know comes from folding events with `evolve`. That is
what makes a crash harmless and `replay --verify` possible. The state and `evolve` are in
moon/state.py, what the engine sends after a decision (orders, timers) in moon/outbox.py; both
are re-exported here. What follows from an attempt's outcome, whichever command brought it
(retries, deviations, the budget, the on_failure policy, compensation), is in moon/rules.py.

Lines drawn here (the engine and its tests rely on them):
- Dedupe. A command id seen before decides nothing ([]). So does a report for an older attempt
  (stale), a report that repeats the recorded outcome of the current attempt, a timer whose
  attempt or phase has moved on, a replan whose revision is not newer, and a repeated
  Compensate/Cancel. A report that *contradicts* a settled attempt (completed after a timeout,
  failed after completed, anything after the workflow ended) is Refusal(ALREADY_SETTLED): the
  sender learns its result was not used. Unknown workflow/step are refusals; an attempt that was
  never scheduled is INVALID_STATE.
- Time. step_timeout fires `timeout_ms` after an attempt is scheduled (schedule-to-close: an
  executor that never picks the order up is caught too) -> StepTimedOut + Deviation(late).
  heartbeat_timeout fires `heartbeat_timeout_ms` after the last journaled sign of life (start,
  heartbeat, checkpoint) -> StepTimedOut + Deviation(executor_lost). Either way the attempt is
  then retried or failed per policy. Heartbeats are journaled at most once per half window, so an
  executor that beats at least twice per window is never declared lost.
  workflow_deadline -> Deviation(late) and the on_failure policy.
- Compensation. Completed steps with a compensation are undone in reverse dependency order, in
  waves: a step's compensation starts once no transitive dependant is still running or still
  waiting to be compensated. Steps in flight when compensation starts are let finish (a late
  completion is compensated too); their retries are abandoned. Compensation attempts keep
  counting after the step's own, so `workflow/step/attempt` stays one idempotency key space.
"""

from __future__ import annotations

import re
from typing import assert_never

import msgspec

from moon.dag import find_cycle, missing_dependencies
from moon.outbox import due_timers, pending_timers, wake_at, work_orders
from moon.rules import (
    _Acc,
    _advance,
    _after_attempt_failure,
    _attempts_left,
    _begin_compensation,
    _check_budget,
    _compensation_failed,
    _compensation_order,
    _deviate,
    _on_failure,
    _progress_compensation,
    backoff_ms,
)
from moon.state import (
    IN_FLIGHT,
    SEEN_LIMIT,
    Outcome,
    StepState,
    StepStatus,
    WorkflowState,
    WorkflowStatus,
    apply,
    evolve,
    initial,
    is_terminal,
)
from streams.ids import check_id
from streams.moon_events import (
    Cancel,
    CheckpointStep,
    Compensate,
    CompleteStep,
    Deviation,
    Dispatch,
    Dispatched,
    ExecutorReport,
    FailStep,
    FireTimer,
    Heartbeat,
    MoonCommand,
    MoonEvent,
    Replan,
    ReplanApplied,
    RetryPolicy,
    StartStep,
    StepCheckpointed,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepHeartbeat,
    StepScheduled,
    StepStarted,
    StepTimedOut,
    TimerKind,
    Usage,
    WorkflowCancelled,
)
from streams.replies import Reason, Refusal

__all__ = [
    "MAX_STEPS",
    "SEEN_LIMIT",
    "StepState",
    "StepStatus",
    "WorkflowState",
    "WorkflowStatus",
    "apply",
    "backoff_ms",
    "decide",
    "due_timers",
    "evolve",
    "initial",
    "is_terminal",
    "pending_timers",
    "wake_at",
    "work_orders",
]

# Steps per dispatch: the engine folds and decides a workflow in one piece, so an unbounded DAG
# is an unbounded stall for every other workflow of the process.
MAX_STEPS = 10_000
_replace = msgspec.structs.replace
_STEP_ID = re.compile(r"[A-Za-z0-9_:-]{1,128}")


# --- decide ------------------------------------------------------------------------------------


def decide(command: MoonCommand, state: WorkflowState) -> list[MoonEvent] | Refusal:
    """What `command` means for the workflow in `state`: events to journal, or a refusal."""
    if command.command_id in state.seen:
        return []
    if isinstance(command, Dispatch):
        return _dispatch(command, state)
    if state.status == "none" or command.workflow_id != state.workflow_id:
        return Refusal(Reason.UNKNOWN_WORKFLOW, command.workflow_id)
    acc = _Acc(state)
    match command:
        case Dispatch():
            raise AssertionError("handled above")
        case StartStep():
            return _start(command, state)
        case Heartbeat():
            return _heartbeat(command, state)
        case CheckpointStep():
            return _checkpoint(command, state)
        case CompleteStep():
            outcome = _complete(command, acc)
        case FailStep():
            outcome = _fail(command, acc)
        case FireTimer():
            outcome = _fire(command, acc)
        case Replan():
            outcome = _replan(command, acc)
        case Compensate():
            if state.status in ("compensating", "compensated"):
                return []
            # A completed or failed workflow can still be undone; a cancelled one was abandoned.
            if state.status == "cancelled":
                return Refusal(Reason.ALREADY_SETTLED, f"workflow is {state.status}")
            _begin_compensation(acc, command.at_ms, command.reason)
            outcome = None
        case Cancel():
            if state.status == "cancelled":
                return []
            if is_terminal(state):
                return Refusal(Reason.ALREADY_SETTLED, f"workflow is {state.status}")
            acc.emit(WorkflowCancelled(at_ms=command.at_ms, reason=command.reason))
            outcome = None
        case _:
            assert_never(command)
    return outcome if outcome is not None else acc.events


def _dispatch(command: Dispatch, state: WorkflowState) -> list[MoonEvent] | Refusal:
    event = Dispatched(
        at_ms=command.at_ms,
        workflow_id=command.workflow_id,
        dispatch_id=command.command_id,
        steps=command.steps,
        deadline_ms=command.deadline_ms,
        budget_tokens=command.budget_tokens,
        plan_id=command.plan_id,
        plan_revision=command.plan_revision,
        on_failure=command.on_failure,
        completed=command.completed,
        forked_from=command.forked_from,
        owner=command.owner,
        traceparent=command.traceparent,
    )
    if state.dispatched is not None:
        first = state.dispatched
        same = _replace(event, at_ms=first.at_ms, dispatch_id=first.dispatch_id,
                        traceparent=first.traceparent)  # a retry may come in another trace
        # The same request again (new id, same content) gets the first answer, not a refusal.
        if command.command_id == first.dispatch_id or same == first:
            return []
        return Refusal(Reason.ALREADY_EXISTS, command.workflow_id)
    if refusal := _invalid(command):
        return refusal
    acc = _Acc(state)
    acc.emit(event)
    _advance(acc, command.at_ms)
    return acc.events


def _invalid(command: Dispatch) -> Refusal | None:
    """Linear in the DAG's size (a quadratic check froze the engine on a 100,000-step DAG)."""
    if refused := check_id(command.workflow_id, "workflow id"):
        return refused
    if len(command.steps) > MAX_STEPS:
        return Refusal(Reason.OVERSIZE, f"{len(command.steps)} steps: at most {MAX_STEPS} "
                                        "per dispatch")
    seen: set[str] = set()
    dupes_found: set[str] = set()
    for spec in command.steps:
        (dupes_found if spec.id in seen else seen).add(spec.id)
    if dupes := sorted(dupes_found):
        return Refusal(Reason.MALFORMED, f"duplicate step ids: {', '.join(dupes[:20])}")
    for spec in command.steps:
        if not _STEP_ID.fullmatch(spec.id):
            return Refusal(Reason.MALFORMED, f"step id {spec.id!r}")
        if spec.timeout_ms <= 0 or (spec.heartbeat_timeout_ms or 1) <= 0:
            return Refusal(Reason.MALFORMED, f"step {spec.id}: timeouts must be positive")
        if problem := _bad_policy(spec.retry):
            return Refusal(Reason.MALFORMED, f"step {spec.id}: {problem}")
    needs = {spec.id: spec.needs for spec in command.steps}
    if missing := missing_dependencies(needs):
        detail = ", ".join(f"{step} needs {dep}" for step, dep in missing)
        return Refusal(Reason.UNKNOWN_DEPENDENCY, detail)
    if cycle := find_cycle(needs):
        return Refusal(Reason.CYCLE, " -> ".join(cycle))
    if unknown := [c.step for c in command.completed if c.step not in needs]:
        return Refusal(Reason.UNKNOWN_STEP, ", ".join(unknown))
    if command.deadline_ms is not None and command.deadline_ms <= command.at_ms:
        return Refusal(Reason.DEADLINE_INFEASIBLE, f"deadline {command.deadline_ms} has passed")
    return None


def _bad_policy(policy: RetryPolicy) -> str:
    if policy.maximum_attempts < 0:
        return "maximum_attempts must be >= 0"
    if policy.initial_interval_ms < 0:
        return "initial_interval_ms must be >= 0"
    if policy.backoff_coefficient < 1.0:
        return "backoff_coefficient must be >= 1"
    if policy.maximum_interval_ms is not None and policy.maximum_interval_ms < 0:
        return "maximum_interval_ms must be >= 0"
    return ""


def _locate(state: WorkflowState, step: str, attempt: int) -> StepState | list[MoonEvent] | Refusal:
    """The step a report is about, or what to answer when it is about nothing current."""
    s = state.steps.get(step)
    if s is None:
        return Refusal(Reason.UNKNOWN_STEP, step)
    if 1 <= attempt < s.attempt:
        return []  # stale: an older attempt's report, its fate was already decided
    if attempt < 1 or attempt > s.attempt:
        return Refusal(Reason.INVALID_STATE, f"attempt {attempt} of {step} was never scheduled")
    return s


def _start(command: StartStep, state: WorkflowState) -> list[MoonEvent] | Refusal:
    s = _locate(state, command.step, command.attempt)
    if not isinstance(s, StepState):
        return s
    if is_terminal(state) or s.status not in IN_FLIGHT or s.started_at is not None:
        return []  # a start report is never contradicted, only late or repeated
    return [
        StepStarted(
            at_ms=command.at_ms,
            step=command.step,
            attempt=command.attempt,
            executor=command.executor,
            command_id=command.command_id,
        )
    ]


def _binding(report: ExecutorReport, s: StepState, *, started_ms: int) -> list[MoonEvent]:
    """An attempt is claimed by taking its order, not by a journaled start (moon/claims.py):
    the first report of an in-flight attempt from its executor journals the start with it, in
    the same decision, so the journal still says who ran it and from when. Only an executor's
    report binds (the engine stamps `executor` from its signature; the gate's checkpoint has
    none)."""
    if s.started_at is not None or not report.executor:
        return []
    at = max(started_ms, s.scheduled_at or started_ms)
    return [StepStarted(at_ms=min(at, report.at_ms), step=report.step, attempt=report.attempt,
                        executor=report.executor, command_id=report.command_id)]


def _heartbeat(command: Heartbeat, state: WorkflowState) -> list[MoonEvent] | Refusal:
    s = _locate(state, command.step, command.attempt)
    if not isinstance(s, StepState):
        return s
    window = s.spec.heartbeat_timeout_ms
    if is_terminal(state) or s.status not in IN_FLIGHT or window is None:
        return []
    if binding := _binding(command, s, started_ms=command.at_ms):
        return binding  # the first word from whoever took it: its window starts now
    if s.heartbeat_at is None or command.at_ms - s.heartbeat_at < window / 2:
        return []  # not started yet, or recent enough: journaling it buys no liveness
    return [StepHeartbeat(at_ms=command.at_ms, step=command.step, attempt=command.attempt)]


def _checkpoint(command: CheckpointStep, state: WorkflowState) -> list[MoonEvent] | Refusal:
    s = _locate(state, command.step, command.attempt)
    if not isinstance(s, StepState):
        return s
    if is_terminal(state) or s.status not in IN_FLIGHT or s.checkpoint == command.state:
        return []
    return [
        *_binding(command, s, started_ms=command.at_ms),
        StepCheckpointed(
            at_ms=command.at_ms, step=command.step, attempt=command.attempt, state=command.state
        )
    ]


def _settled(s: StepState, state: WorkflowState, outcome: Outcome) -> list[MoonEvent] | Refusal:
    if s.outcome == outcome:
        return []  # the same report again
    what = s.outcome or s.status if not is_terminal(state) else f"workflow {state.status}"
    return Refusal(Reason.ALREADY_SETTLED, f"{s.spec.id} attempt {s.attempt}: {what}")


def _complete(command: CompleteStep, acc: _Acc) -> list[MoonEvent] | Refusal | None:
    state = acc.state
    s = _locate(state, command.step, command.attempt)
    if not isinstance(s, StepState):
        return s
    if is_terminal(state) or s.status not in IN_FLIGHT:
        return _settled(s, state, "completed")
    at = command.at_ms
    for event in _binding(command, s, started_ms=at - command.usage.wall_ms):
        acc.emit(event)
    if s.status == "compensating":
        acc.emit(
            StepCompensated(
                at_ms=at,
                step=command.step,
                attempt=command.attempt,
                result=command.result,
                usage=command.usage,
            )
        )
        _progress_compensation(acc, at)
        return None
    acc.emit(
        StepCompleted(
            at_ms=at,
            step=command.step,
            attempt=command.attempt,
            result=command.result,
            usage=command.usage,
        )
    )
    if s.spec.deadline_ms is not None and at > s.spec.deadline_ms:
        _deviate(acc, at, "late", s, f"finished {at - s.spec.deadline_ms} ms after its deadline")
    if acc.state.status == "compensating":
        _progress_compensation(acc, at)
        return None
    _check_budget(acc, at)
    _advance(acc, at)
    return None


def _fail(command: FailStep, acc: _Acc) -> list[MoonEvent] | Refusal | None:
    state = acc.state
    s = _locate(state, command.step, command.attempt)
    if not isinstance(s, StepState):
        return s
    if is_terminal(state) or s.status not in IN_FLIGHT:
        return _settled(s, state, "failed")
    for event in _binding(command, s, started_ms=command.at_ms - command.usage.wall_ms):
        acc.emit(event)
    policy = s.spec.retry
    retryable = command.retryable and (command.error_type or command.error) not in set(
        policy.non_retryable_errors
    )
    at = command.at_ms
    if s.status == "compensating":
        _compensation_failed(
            acc, s, at, command.error, error_type=command.error_type, usage=command.usage
        )
        return None
    will_retry = retryable and state.status == "running" and _attempts_left(s)
    acc.emit(
        StepFailed(
            at_ms=at,
            step=command.step,
            attempt=command.attempt,
            error=command.error,
            error_type=command.error_type,
            usage=command.usage,
            will_retry=will_retry,
        )
    )
    _after_attempt_failure(acc, s, at, will_retry, command.error)
    return None


def _fire(command: FireTimer, acc: _Acc) -> list[MoonEvent] | Refusal | None:
    state, at = acc.state, command.at_ms
    if command.kind == "wake":
        # The engine turns a wake-up into the timers that are due; as a decision it means nothing.
        return Refusal(Reason.MALFORMED, "a wake-up is not a timer to decide")
    if command.kind == "workflow_deadline":
        if state.status != "running" or state.late:
            return []
        if state.deadline_ms is not None and at < state.deadline_ms:
            return []  # never before its due time, whatever clock fired it
        acc.emit(
            Deviation(
                at_ms=at,
                workflow_id=state.workflow_id,
                kind="late",
                detail=f"workflow deadline {state.deadline_ms} passed",
                plan_id=state.plan_id,
                plan_revision=state.plan_revision,
            )
        )
        _on_failure(acc, at, "workflow deadline passed")
        return None
    # A backoff timer names the attempt it will start, one past the step's current one.
    probe = command.attempt - 1 if command.kind == "retry_backoff" else command.attempt
    s = _locate(state, command.step, probe)
    if not isinstance(s, StepState):
        return s if isinstance(s, Refusal) and s.reason is Reason.UNKNOWN_STEP else []
    match command.kind:
        case "retry_backoff":
            if s.retry_due_ms is not None and at < s.retry_due_ms:
                return []
            if s.status == "backoff" and state.status == "running" and not state.halted:
                acc.emit(
                    StepScheduled(
                        at_ms=at, step=s.spec.id, attempt=s.attempt + 1, executor=s.assigned
                    )
                )
            elif s.status == "compensation_backoff" and state.status == "compensating":
                acc.emit(_compensation_order(s, at, fresh=False))
            return None
        case "step_timeout" | "heartbeat_timeout":
            if is_terminal(state) or s.status not in IN_FLIGHT:
                return []
            if (command.kind == "step_timeout" and s.scheduled_at is not None
                    and at < s.scheduled_at + s.spec.timeout_ms):
                return []
            if command.kind == "heartbeat_timeout":
                window = s.spec.heartbeat_timeout_ms
                if window is None or s.heartbeat_at is None or s.heartbeat_at + window > at:
                    return []  # a newer sign of life moved the deadline
            _timed_out(acc, s, at, command.kind)
            return None
        case _:
            raise AssertionError(command.kind)


def _timed_out(acc: _Acc, s: StepState, at: int, kind: TimerKind) -> None:
    if s.status == "compensating":
        _compensation_failed(
            acc, s, at, f"{kind} at attempt {s.attempt}", error_type="timeout", usage=Usage()
        )
        return
    will_retry = acc.state.status == "running" and _attempts_left(s)
    acc.emit(
        StepTimedOut(at_ms=at, step=s.spec.id, attempt=s.attempt, timer=kind, will_retry=will_retry)
    )
    if acc.state.status != "running":
        _progress_compensation(acc, at)
        return
    lost = kind == "heartbeat_timeout"
    _deviate(acc, at, "executor_lost" if lost else "late", s, f"{kind} at attempt {s.attempt}")
    _after_attempt_failure(acc, s, at, will_retry, f"{kind} at attempt {s.attempt}")


def _replan(command: Replan, acc: _Acc) -> list[MoonEvent] | Refusal | None:
    state = acc.state
    if state.status == "compensating":
        return Refusal(Reason.INVALID_STATE, "workflow is compensating")
    if is_terminal(state):
        return Refusal(Reason.ALREADY_SETTLED, f"workflow is {state.status}")
    if command.revision <= state.plan_revision:
        return []  # this revision or a newer one is already applied
    if unknown := sorted(k for k in command.assignments if k not in state.steps):
        return Refusal(Reason.UNKNOWN_STEP, ", ".join(unknown))
    # Done is done: completed steps keep their executor and result.
    assignments = {
        k: v for k, v in command.assignments.items() if state.steps[k].status != "completed"
    }
    moved = [
        k
        for k, v in assignments.items()
        if state.steps[k].status in ("scheduled", "running") and state.steps[k].executor != v
    ]
    at = command.at_ms
    acc.emit(
        ReplanApplied(
            at_ms=at,
            plan_id=command.plan_id,
            revision=command.revision,
            assignments=assignments,
            reason=command.reason,
            budget_tokens=command.budget_tokens,
        )
    )
    if not acc.state.halted:
        for step, s in acc.state.steps.items():
            if s.status in ("failed", "backoff") or step in moved:
                acc.emit(
                    StepScheduled(
                        at_ms=at, step=step, attempt=s.attempt + 1, executor=s.assigned, fresh=True
                    )
                )
    _advance(acc, at)
    return None
