"""The workflow decider as a specification: given these commands, when this one, then these."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path
from typing import Any

import pytest

from moon.workflow import (
    SEEN_LIMIT,
    WorkflowState,
    apply,
    backoff_ms,
    decide,
    due_timers,
    initial,
    is_terminal,
    pending_timers,
    wake_at,
    work_orders,
)
from streams.moon_events import (
    BudgetExhausted,
    Cancel,
    CheckpointStep,
    Compensate,
    CompensationFailed,
    CompensationScheduled,
    CompensationStarted,
    CompleteStep,
    Decision,
    Deviation,
    Dispatch,
    Dispatched,
    FailStep,
    FireTimer,
    Heartbeat,
    MoonCommand,
    MoonEvent,
    Replan,
    ReplanApplied,
    RetryPolicy,
    RetryScheduled,
    StartStep,
    StepCheckpointed,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepHeartbeat,
    StepScheduled,
    StepSpec,
    StepStarted,
    StepTimedOut,
    TimerRequest,
    Usage,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowFailed,
    command_kind,
    significant_kind,
)
from streams.replies import Reason, Refusal

from ..parsing import parse

W = "w1"
LATER = 10**9
_ids = itertools.count()


def spec(step: str, *needs: str, **kw: Any) -> StepSpec:
    return StepSpec(id=step, capability=f"do.{step}", needs=needs, **kw)


def undoable(step: str, *needs: str, **kw: Any) -> StepSpec:
    return spec(step, *needs, compensation=f"undo.{step}", **kw)


def dispatch(*steps: StepSpec, **kw: Any) -> Dispatch:
    kw.setdefault("command_id", "dispatch-1")
    kw.setdefault("workflow_id", W)
    kw.setdefault("at_ms", 0)
    return Dispatch(steps=steps, **kw)


def c(command_type: type[MoonCommand], **kw: Any) -> Any:
    """A command with a fresh id, for workflow W at time 0 unless told otherwise."""
    kw.setdefault("command_id", f"c{next(_ids)}")
    kw.setdefault("workflow_id", W)
    kw.setdefault("at_ms", 0)
    return command_type(**kw)


def done(step: str, attempt: int = 1, **kw: Any) -> CompleteStep:
    result: CompleteStep = c(CompleteStep, step=step, attempt=attempt, **kw)
    return result


def fail(step: str, attempt: int = 1, error: str = "boom", **kw: Any) -> FailStep:
    result: FailStep = c(FailStep, step=step, attempt=attempt, error=error, **kw)
    return result


def fire(kind: str, step: str = "", attempt: int = 0, **kw: Any) -> FireTimer:
    """A timer firing; unless told when, long after anything is due (timers never fire early:
    the decider ignores one that does)."""
    kw.setdefault("at_ms", LATER)
    result: FireTimer = c(FireTimer, kind=kind, step=step, attempt=attempt, **kw)
    return result


def given(*commands: MoonCommand) -> WorkflowState:
    """Fold the decisions these commands make; every one must be accepted."""
    state = initial
    for command in commands:
        events = decide(command, state)
        assert not isinstance(events, Refusal), (command, events)
        state = apply(state, Decision(command=command, events=events))
    return state


def when(state: WorkflowState, command: MoonCommand) -> list[MoonEvent] | Refusal:
    return decide(command, state)


def then(state: WorkflowState, command: MoonCommand) -> tuple[list[MoonEvent], WorkflowState]:
    events = decide(command, state)
    assert not isinstance(events, Refusal), events
    return events, apply(state, Decision(command=command, events=events))


def kinds(events: list[MoonEvent] | Refusal) -> list[str]:
    assert not isinstance(events, Refusal), events
    return [f"{type(e).__name__}:{getattr(e, 'step', '')}".rstrip(":") for e in events]


DIAMOND = (undoable("a"), undoable("b", "a"), undoable("c", "a"), undoable("d", "b", "c"))


# --- scheduling ---------------------------------------------------------------------------------


def test_dispatch_schedules_only_the_steps_without_dependencies() -> None:
    events = when(initial, dispatch(*DIAMOND, at_ms=5))
    assert kinds(events) == ["Dispatched", "StepScheduled:a"]
    assert isinstance(events, list)
    assert events[1] == StepScheduled(at_ms=5, step="a", attempt=1)


def test_dispatch_tells_the_shell_which_orders_and_timers_to_send() -> None:
    command = dispatch(spec("a", executor="x", timeout_ms=100), spec("b", "a"), deadline_ms=900)
    events, state = then(initial, command)
    [order] = work_orders(state, events)
    assert (order.step, order.attempt, order.executor, order.capability) == ("a", 1, "x", "do.a")
    assert order.idempotency_key == "w1/a/1"
    assert order.deadline_ms == 100
    assert pending_timers(state) == [
        TimerRequest(workflow_id=W, kind="workflow_deadline", at_ms=900),
        TimerRequest(workflow_id=W, kind="step_timeout", at_ms=100, step="a", attempt=1),
    ]
    assert wake_at(state) == 100  # the engine's one wake-up: the earliest of them


def test_a_step_is_scheduled_once_all_its_dependencies_completed() -> None:
    state = given(dispatch(*DIAMOND), done("a"))
    assert state.steps["b"].status == "scheduled" and state.steps["c"].status == "scheduled"
    assert kinds(when(state, done("b"))) == ["StepCompleted:b"]
    events, _ = then(given(dispatch(*DIAMOND), done("a"), done("b")), done("c", at_ms=7))
    assert kinds(events) == ["StepCompleted:c", "StepScheduled:d"]


def test_work_orders_carry_the_results_of_the_dependencies() -> None:
    state = given(dispatch(*DIAMOND), done("a", result=b"A"), done("b", result=b"B"))
    events, state = then(state, done("c", result=b"C"))
    [order] = work_orders(state, events)
    assert order.input == {"b": b"B", "c": b"C"}


def test_the_last_completion_completes_the_workflow_with_its_usage() -> None:
    state = given(dispatch(spec("a"), spec("b", "a")), done("a", usage=Usage(tokens=3)))
    events, state = then(state, done("b", usage=Usage(tokens=4, wall_ms=9, joules=0.5)))
    assert events[-1] == WorkflowCompleted(at_ms=0, usage=Usage(tokens=7, wall_ms=9, joules=0.5))
    assert is_terminal(state) and state.status == "completed"
    assert work_orders(state, events) == [] and wake_at(state) is None


def test_an_empty_workflow_completes_at_once() -> None:
    assert kinds(when(initial, dispatch())) == ["Dispatched", "WorkflowCompleted"]


# --- refusals at dispatch ------------------------------------------------------------------------


def test_a_cycle_is_refused_and_named() -> None:
    out = when(initial, dispatch(spec("a", "c"), spec("b", "a"), spec("c", "b")))
    assert isinstance(out, Refusal) and out.reason is Reason.CYCLE
    assert out.detail == "a -> c -> b -> a"


def test_a_missing_dependency_is_refused_and_named() -> None:
    out = when(initial, dispatch(spec("a"), spec("b", "a", "zz")))
    assert out == Refusal(Reason.UNKNOWN_DEPENDENCY, "b needs zz")


def test_dispatch_refuses_malformed_graphs_and_policies() -> None:
    assert isinstance(out := when(initial, dispatch(spec("a"), spec("a"))), Refusal)
    assert out.reason is Reason.MALFORMED
    bad = spec("a", retry=RetryPolicy(backoff_coefficient=0.5))
    assert isinstance(out := when(initial, dispatch(bad)), Refusal)
    assert out.reason is Reason.MALFORMED
    assert isinstance(out := when(initial, dispatch(spec("a"), workflow_id="w.1")), Refusal)
    assert out.reason is Reason.INVALID_ID
    out = when(initial, dispatch(spec("a"), at_ms=10, deadline_ms=10))
    assert isinstance(out, Refusal) and out.reason is Reason.DEADLINE_INFEASIBLE


def test_dispatching_again_answers_like_the_first_time_or_refuses_a_different_workflow() -> None:
    state = given(dispatch(spec("a")))
    assert when(state, dispatch(spec("a"))) == []
    assert when(state, dispatch(spec("a"), command_id="resend", at_ms=99)) == []
    out = when(state, dispatch(spec("b"), command_id="other"))
    assert out == Refusal(Reason.ALREADY_EXISTS, W)


# --- retries ------------------------------------------------------------------------------------


POLICY = RetryPolicy(
    maximum_attempts=4,
    initial_interval_ms=100,
    backoff_coefficient=3.0,
    maximum_interval_ms=500,
    non_retryable_errors=("ValueError",),
)


def test_backoff_follows_temporal_formula_and_is_capped() -> None:
    assert [backoff_ms(POLICY, n) for n in (1, 2, 3, 4)] == [100, 300, 500, 500]
    assert backoff_ms(RetryPolicy(initial_interval_ms=1000), 50) == 100_000  # 100 x initial
    assert backoff_ms(RetryPolicy(maximum_interval_ms=10**9), 10_000) == 10**9  # no overflow


def test_a_retryable_failure_schedules_a_retry_timer_with_the_backoff_delay() -> None:
    state = given(dispatch(spec("a", retry=POLICY)))
    events, state = then(state, fail("a", at_ms=1000, usage=Usage(tokens=2)))
    assert events == [
        StepFailed(
            at_ms=1000, step="a", attempt=1, error="boom", usage=Usage(tokens=2), will_retry=True
        ),
        RetryScheduled(at_ms=1000, step="a", attempt=2, delay_ms=100, due_ms=1100),
    ]
    assert state.steps["a"].status == "backoff" and state.usage.tokens == 2
    assert pending_timers(state) == [
        TimerRequest(workflow_id=W, kind="retry_backoff", at_ms=1100, step="a", attempt=2)
    ]


def test_pending_timers_are_what_the_state_waits_on_and_the_wake_up_is_the_earliest() -> None:
    """What a wake-up fires, and where the engine arms the next one."""
    command = dispatch(spec("a", timeout_ms=100, heartbeat_timeout_ms=50, retry=POLICY),
                       spec("b", "a"), deadline_ms=900)
    _, state = then(initial, command)
    _, state = then(state, c(StartStep, step="a", attempt=1, executor="x", at_ms=10))
    assert pending_timers(state) == [
        TimerRequest(workflow_id=W, kind="workflow_deadline", at_ms=900),
        TimerRequest(workflow_id=W, kind="step_timeout", at_ms=100, step="a", attempt=1),
        TimerRequest(workflow_id=W, kind="heartbeat_timeout", at_ms=60, step="a", attempt=1),
    ]
    assert wake_at(state) == 60 and wake_at(state, after_ms=60) == 100
    assert [t.kind for t in due_timers(state, 100)] == ["heartbeat_timeout", "step_timeout"]
    assert due_timers(state, 59) == []
    _, state = then(state, fail("a", at_ms=40))
    retry = TimerRequest(workflow_id=W, kind="retry_backoff", at_ms=140, step="a", attempt=2)
    assert pending_timers(state) == [
        TimerRequest(workflow_id=W, kind="workflow_deadline", at_ms=900), retry]
    assert wake_at(state) == 140  # moved later: the engine's earlier wake-up still stands
    _, state = then(state, fire("workflow_deadline", at_ms=900))
    assert state.late and not is_terminal(state)  # on_failure "wait": late, still running
    assert pending_timers(state) == [retry]  # the deadline is not armed twice


def test_an_ended_workflow_waits_on_no_timer() -> None:
    state = given(dispatch(spec("a", heartbeat_timeout_ms=50), spec("b", "a"), deadline_ms=900))
    _, state = then(state, done("a", at_ms=10))
    assert [t.name for t in pending_timers(state)] == ["workflow_deadline", "step_timeout.b.1"]
    _, state = then(state, done("b", at_ms=20))
    assert pending_timers(state) == [] and wake_at(state) is None


def test_a_wake_up_is_never_decided_as_a_timer() -> None:
    state = given(dispatch(spec("a")))
    assert isinstance(when(state, fire("wake", at_ms=10**9)), Refusal)


def test_the_backoff_timer_reschedules_the_step_with_the_next_attempt() -> None:
    state = given(dispatch(spec("a", retry=POLICY)), fail("a", at_ms=1000))
    events, state = then(state, fire("retry_backoff", "a", 2, at_ms=1100))
    assert events == [StepScheduled(at_ms=1100, step="a", attempt=2)]
    assert [o.idempotency_key for o in work_orders(state, events)] == ["w1/a/2"]
    events, state = then(state, fail("a", 2, at_ms=2000))
    assert events[-1] == RetryScheduled(at_ms=2000, step="a", attempt=3, delay_ms=300, due_ms=2300)


def test_a_retry_resumes_from_the_last_checkpoint() -> None:
    state = given(
        dispatch(spec("a", retry=POLICY)),
        c(StartStep, step="a", attempt=1, executor="x"),
        c(CheckpointStep, step="a", attempt=1, state=b"page-7"),
        fail("a"),
    )
    events, state = then(state, fire("retry_backoff", "a", 2))
    [order] = work_orders(state, events)
    assert order.checkpoint == b"page-7"


def test_a_non_retryable_failure_fails_the_step_with_a_deviation() -> None:
    state = given(dispatch(spec("a", retry=POLICY, executor="x")))
    events = when(state, fail("a", error="bad input", retryable=False))
    assert kinds(events) == ["StepFailed:a", "Deviation:a"]
    assert isinstance(events, list) and isinstance(dev := events[1], Deviation)
    assert (dev.kind, dev.step, dev.attempt, dev.executor) == ("failed", "a", 1, "x")
    by_type = when(state, fail("a", error="bad", error_type="ValueError"))
    assert kinds(by_type) == ["StepFailed:a", "Deviation:a"]


def test_when_attempts_are_exhausted_the_step_fails_and_the_workflow_waits() -> None:
    once = spec("a", retry=RetryPolicy(maximum_attempts=2))
    state = given(dispatch(once, spec("b")), fail("a"), fire("retry_backoff", "a", 2))
    events, state = then(state, fail("a", 2))
    assert kinds(events) == ["StepFailed:a", "Deviation:a"]
    assert state.steps["a"].status == "failed" and state.status == "running"
    events, state = then(state, done("b"))
    assert kinds(events) == ["StepCompleted:b"]  # the other branch goes on; a blocks completion


def test_unlimited_attempts_never_give_up() -> None:
    state = given(dispatch(spec("a", retry=RetryPolicy(maximum_attempts=0))))
    for attempt in range(1, 30):
        events, state = then(state, fail("a", attempt))
        assert kinds(events) == ["StepFailed:a", "RetryScheduled:a"]
        state = given_more(state, fire("retry_backoff", "a", attempt + 1))


def given_more(state: WorkflowState, *commands: MoonCommand) -> WorkflowState:
    for command in commands:
        _, state = then(state, command)
    return state


def test_the_auto_compensate_policy_undoes_the_work_when_a_step_fails_for_good() -> None:
    state = given(
        dispatch(
            undoable("a"),
            spec("b", "a", retry=RetryPolicy(maximum_attempts=1)),
            on_failure="compensate",
        ),
        done("a"),
    )
    events = when(state, fail("b"))
    assert kinds(events) == [
        "StepFailed:b",
        "Deviation:b",
        "CompensationStarted",
        "CompensationScheduled:a",
    ]


def test_the_fail_policy_fails_the_workflow() -> None:
    state = given(dispatch(spec("a", retry=RetryPolicy(maximum_attempts=1)), on_failure="fail"))
    events, state = then(state, fail("a"))
    assert kinds(events) == ["StepFailed:a", "Deviation:a", "WorkflowFailed"]
    assert state.status == "failed" and is_terminal(state)


# --- time ----------------------------------------------------------------------------------------


def test_a_step_past_its_timeout_is_late_and_retried() -> None:
    state = given(dispatch(spec("a", timeout_ms=50, retry=POLICY)))
    events, state = then(state, fire("step_timeout", "a", 1, at_ms=50))
    assert kinds(events) == ["StepTimedOut:a", "Deviation:a", "RetryScheduled:a"]
    assert isinstance(events[1], Deviation) and events[1].kind == "late"
    assert state.steps["a"].status == "backoff"


def test_a_late_step_with_no_attempts_left_fails() -> None:
    state = given(dispatch(spec("a", timeout_ms=50, retry=RetryPolicy(maximum_attempts=1))))
    events = when(state, fire("step_timeout", "a", 1, at_ms=50))
    assert kinds(events) == ["StepTimedOut:a", "Deviation:a", "Deviation:a"]
    assert [e.kind for e in events if isinstance(e, Deviation)] == ["late", "failed"]  # type: ignore[union-attr]


def test_a_timeout_for_an_attempt_that_already_finished_decides_nothing() -> None:
    state = given(dispatch(spec("a"), spec("b")), done("a"))
    assert when(state, fire("step_timeout", "a", 1)) == []
    state = given(dispatch(spec("a", retry=POLICY)), fail("a"), fire("retry_backoff", "a", 2))
    assert when(state, fire("step_timeout", "a", 1)) == []  # attempt 2 runs now


def test_a_silent_executor_is_lost_when_its_heartbeat_times_out() -> None:
    state = given(
        dispatch(spec("a", heartbeat_timeout_ms=30, retry=POLICY)),
        c(StartStep, step="a", attempt=1, executor="x", at_ms=10),
    )
    events = when(state, fire("heartbeat_timeout", "a", 1, at_ms=40))
    assert kinds(events) == ["StepTimedOut:a", "Deviation:a", "RetryScheduled:a"]
    assert isinstance(dev := events[1], Deviation)  # type: ignore[index]
    assert (dev.kind, dev.executor) == ("executor_lost", "x")


def test_heartbeats_are_journaled_at_most_once_per_half_window_and_refresh_the_timer() -> None:
    state = given(
        dispatch(spec("a", heartbeat_timeout_ms=30)),
        c(StartStep, step="a", attempt=1, executor="x", at_ms=10),
    )
    assert when(state, c(Heartbeat, step="a", attempt=1, at_ms=20)) == []
    events, state = then(state, c(Heartbeat, step="a", attempt=1, at_ms=25))
    assert events == [StepHeartbeat(at_ms=25, step="a", attempt=1)]
    assert [t for t in pending_timers(state) if t.kind == "heartbeat_timeout"] == [
        TimerRequest(workflow_id=W, kind="heartbeat_timeout", at_ms=55, step="a", attempt=1)
    ]
    assert when(state, fire("heartbeat_timeout", "a", 1, at_ms=40)) == []  # superseded
    assert kinds(when(state, fire("heartbeat_timeout", "a", 1, at_ms=55)))[0] == "StepTimedOut:a"


def test_the_workflow_deadline_passing_is_a_late_deviation_once() -> None:
    state = given(dispatch(spec("a"), deadline_ms=100))
    events, state = then(state, fire("workflow_deadline", at_ms=100))
    assert kinds(events) == ["Deviation"]
    assert isinstance(events[0], Deviation) and events[0].kind == "late"
    assert state.late and when(state, fire("workflow_deadline", at_ms=101)) == []


def test_finishing_after_the_step_deadline_is_a_late_deviation() -> None:
    state = given(dispatch(spec("a", deadline_ms=10), spec("b")))
    events = when(state, done("a", at_ms=15))
    assert kinds(events) == ["StepCompleted:a", "Deviation:a"]


# --- replan --------------------------------------------------------------------------------------


def test_a_replan_keeps_completed_steps_and_reschedules_failed_ones_elsewhere() -> None:
    once = RetryPolicy(maximum_attempts=1)
    state = given(
        dispatch(spec("a", executor="x"), spec("b", "a", executor="x", retry=once)),
        done("a", result=b"A"),
        fail("b"),
    )
    replan = c(Replan, plan_id="p", revision=1, assignments={"a": "y", "b": "y"}, reason="x died")
    events, state = then(state, replan)
    assert events == [
        ReplanApplied(at_ms=0, plan_id="p", revision=1, assignments={"b": "y"}, reason="x died"),
        StepScheduled(at_ms=0, step="b", attempt=2, executor="y", fresh=True),
    ]
    assert state.steps["a"].executor == "x" and state.steps["a"].result == b"A"
    [order] = work_orders(state, events)
    assert (order.executor, order.input) == ("y", {"a": b"A"})
    # a fresh retry window: the failed attempt does not count against the policy
    assert kinds(when(state, fail("b", 2))) == ["StepFailed:b", "Deviation:b"]


def test_a_replan_moving_a_running_step_starts_a_new_attempt_and_the_old_one_goes_stale() -> None:
    state = given(dispatch(spec("a", executor="x")))
    state = given_more(state, c(Replan, plan_id="p", revision=1, assignments={"a": "y"}))
    assert (state.steps["a"].attempt, state.steps["a"].executor) == (2, "y")
    assert when(state, done("a", 1)) == []


def test_a_replan_that_is_not_newer_or_names_unknown_steps_is_not_applied() -> None:
    state = given(dispatch(spec("a"), plan_id="p", plan_revision=3))
    assert when(state, c(Replan, plan_id="p", revision=3, assignments={})) == []
    out = when(state, c(Replan, plan_id="p", revision=4, assignments={"zz": "y"}))
    assert out == Refusal(Reason.UNKNOWN_STEP, "zz")


# --- compensation --------------------------------------------------------------------------------


def test_compensation_runs_in_reverse_dependency_order_along_a_chain() -> None:
    chain = (undoable("a"), undoable("b", "a"), undoable("c", "b"), spec("d", "c"))
    state = given(dispatch(*chain), done("a"), done("b"), done("c"))
    events, state = then(state, c(Compensate, reason="user"))
    assert events[0] == CompensationStarted(at_ms=0, reason="user", steps=("c", "b", "a"))
    assert kinds(events)[1:] == []  # d is in flight: let it finish before undoing under it
    events, state = then(state, done("d"))
    assert kinds(events) == ["StepCompleted:d", "CompensationScheduled:c"]  # d has no undo
    events, state = then(state, done("c", 2))
    assert kinds(events) == ["StepCompensated:c", "CompensationScheduled:b"]
    events, state = then(state, done("b", 2))
    assert kinds(events) == ["StepCompensated:b", "CompensationScheduled:a"]
    events, state = then(state, done("a", 2))
    assert kinds(events) == ["StepCompensated:a", "WorkflowCompensated"]
    assert state.status == "compensated"


def test_compensation_of_a_diamond_runs_in_reverse_topological_waves() -> None:
    state = given(dispatch(*DIAMOND), done("a"), done("b"), done("c"), done("d"))
    assert state.status == "completed"
    state = given(dispatch(*DIAMOND), done("a"), done("b"), done("c"))
    events, state = then(state, c(Compensate))
    assert kinds(events) == ["CompensationStarted"]  # d is still running: wait for it
    events, state = then(state, done("d"))
    assert kinds(events) == ["StepCompleted:d", "CompensationScheduled:d"]
    [order] = work_orders(state, events)
    assert (order.capability, order.compensation, order.idempotency_key) == (
        "undo.d",
        True,
        "w1/d/2",
    )
    events, state = then(state, done("d", 2))
    assert kinds(events) == [
        "StepCompensated:d",
        "CompensationScheduled:c",
        "CompensationScheduled:b",
    ]
    events, state = then(state, done("b", 2))
    assert kinds(events) == ["StepCompensated:b"]  # a waits for c as well
    events, state = then(state, done("c", 2))
    assert kinds(events) == ["StepCompensated:c", "CompensationScheduled:a"]
    events, state = then(state, done("a", 2))
    assert kinds(events) == ["StepCompensated:a", "WorkflowCompensated"]


def test_a_failing_compensation_is_retried_then_reported_never_dropped() -> None:
    two = RetryPolicy(maximum_attempts=2, initial_interval_ms=10)
    state = given(
        dispatch(undoable("a"), undoable("b", "a", retry=two)), done("a"), done("b"), c(Compensate)
    )
    events, state = then(state, fail("b", 2, error="refund api down", at_ms=100))
    assert events == [
        CompensationFailed(
            at_ms=100, step="b", attempt=2, error="refund api down", will_retry=True
        ),
        RetryScheduled(at_ms=100, step="b", attempt=3, delay_ms=10, due_ms=110),
    ]
    events, state = then(state, fire("retry_backoff", "b", 3, at_ms=110))
    assert events == [CompensationScheduled(at_ms=110, step="b", attempt=3, capability="undo.b")]
    events, state = then(state, fail("b", 3, error="still down"))
    assert kinds(events) == ["CompensationFailed:b", "Deviation:b", "CompensationScheduled:a"]
    assert isinstance(events[1], Deviation) and events[1].kind == "compensation_failed"
    events, state = then(state, done("a", 2))
    assert events[-1] == WorkflowCompensated(at_ms=0, failed=("b",))
    assert state.status == "compensated"


def test_a_compensation_that_times_out_is_retried_like_a_failure() -> None:
    state = given(dispatch(undoable("a", timeout_ms=5)), done("a"), c(Compensate))
    assert kinds(when(state, fire("step_timeout", "a", 2))) == [
        "CompensationFailed:a",
        "RetryScheduled:a",
    ]


def test_compensating_with_nothing_to_undo_ends_at_once() -> None:
    state = given(dispatch(spec("a"), spec("b")), done("a"))
    events, state = then(state, c(Compensate))
    assert kinds(events) == ["CompensationStarted"]  # b is still running
    events, state = then(state, fail("b", retryable=False))
    assert kinds(events) == ["StepFailed:b", "WorkflowCompensated"]
    assert when(state, c(Compensate)) == []


def test_a_replan_during_compensation_is_refused() -> None:
    state = given(dispatch(undoable("a"), spec("b")), done("a"), c(Compensate))
    out = when(state, c(Replan, plan_id="p", revision=1, assignments={}))
    assert isinstance(out, Refusal) and out.reason is Reason.INVALID_STATE


# --- dedupe and refusals for reports ------------------------------------------------------------


def test_a_command_id_seen_before_decides_nothing() -> None:
    first = done("a")
    state = given(dispatch(spec("a"), spec("b")), first)
    assert when(state, first) == []
    assert when(state, dispatch(spec("zz"))) == []  # even a different body under the same id


def test_a_report_for_a_stale_attempt_decides_nothing() -> None:
    state = given(dispatch(spec("a", retry=POLICY)), fail("a"), fire("retry_backoff", "a", 2))
    assert when(state, done("a", 1)) == []
    assert when(state, fail("a", 1)) == []
    assert when(state, c(StartStep, step="a", attempt=1, executor="x")) == []


def test_the_same_outcome_reported_again_under_a_new_id_decides_nothing() -> None:
    state = given(dispatch(spec("a"), spec("b")), done("a"))
    assert when(state, done("a")) == []


def test_a_report_contradicting_a_settled_attempt_is_refused() -> None:
    state = given(dispatch(spec("a"), spec("b")), done("a"))
    out = when(state, fail("a"))
    assert isinstance(out, Refusal) and out.reason is Reason.ALREADY_SETTLED
    timed_out = given(
        dispatch(spec("a", retry=RetryPolicy(maximum_attempts=1))), fire("step_timeout", "a", 1)
    )
    out = when(timed_out, done("a"))
    assert isinstance(out, Refusal) and out.reason is Reason.ALREADY_SETTLED


def test_reports_about_unknown_things_are_refused() -> None:
    assert when(initial, done("a")) == Refusal(Reason.UNKNOWN_WORKFLOW, W)
    state = given(dispatch(spec("a")))
    assert when(state, done("a", workflow_id="w2")) == Refusal(Reason.UNKNOWN_WORKFLOW, "w2")
    assert when(state, done("zz")) == Refusal(Reason.UNKNOWN_STEP, "zz")
    out = when(state, done("a", 2))
    assert isinstance(out, Refusal) and out.reason is Reason.INVALID_STATE


def test_the_seen_ids_stay_bounded() -> None:
    state = given(dispatch(spec("a", heartbeat_timeout_ms=2)))
    state = given_more(state, c(StartStep, step="a", attempt=1, executor="x", at_ms=0))
    for t in range(1, SEEN_LIMIT + 50):
        state = given_more(state, c(Heartbeat, step="a", attempt=1, at_ms=t))
    assert len(state.seen) == SEEN_LIMIT


def test_checkpoints_are_journaled_and_an_identical_one_is_not() -> None:
    state = given(dispatch(spec("a")), c(StartStep, step="a", attempt=1, executor="x"))
    events, state = then(state, c(CheckpointStep, step="a", attempt=1, state=b"s1", at_ms=3))
    assert events == [StepCheckpointed(at_ms=3, step="a", attempt=1, state=b"s1")]
    assert when(state, c(CheckpointStep, step="a", attempt=1, state=b"s1")) == []


def test_a_start_is_journaled_once() -> None:
    state = given(dispatch(spec("a")))
    start = c(StartStep, step="a", attempt=1, executor="x", at_ms=4)
    events, state = then(state, start)
    assert events == [StepStarted(at_ms=4, step="a", attempt=1, executor="x",
                                  command_id=start.command_id)]
    assert state.steps["a"].status == "running"
    assert state.steps["a"].start_id == start.command_id  # only its sender runs the attempt
    assert when(state, c(StartStep, step="a", attempt=1, executor="x")) == []


# --- budget and cancel ---------------------------------------------------------------------------


def test_an_exhausted_budget_halts_the_workflow_until_a_replan_raises_it() -> None:
    state = given(dispatch(spec("a"), spec("b", "a"), budget_tokens=10))
    events, state = then(state, done("a", usage=Usage(tokens=11)))
    assert events == [
        StepCompleted(at_ms=0, step="a", attempt=1, usage=Usage(tokens=11)),
        BudgetExhausted(at_ms=0, budget_tokens=10, used_tokens=11),
        Deviation(at_ms=0, workflow_id=W, kind="budget_overrun", detail="11 tokens used of 10"),
    ]
    assert state.halted and state.steps["b"].status == "pending"
    events, state = then(
        state, c(Replan, plan_id="p", revision=1, assignments={}, budget_tokens=50)
    )
    assert kinds(events) == ["ReplanApplied", "StepScheduled:b"]


def test_a_failed_attempt_costs_tokens_too() -> None:
    state = given(dispatch(spec("a", retry=POLICY), budget_tokens=5))
    events = when(state, fail("a", usage=Usage(tokens=6)))
    assert kinds(events) == ["StepFailed:a", "BudgetExhausted", "Deviation", "RetryScheduled:a"]
    _, halted = then(state, fail("a", usage=Usage(tokens=6)))
    assert when(halted, fire("retry_backoff", "a", 2)) == []  # no new work while halted


def test_cancel_stops_scheduling_and_later_results_are_refused() -> None:
    state = given(dispatch(spec("a"), spec("b", "a")))
    events, state = then(state, c(Cancel, reason="user"))
    assert events == [WorkflowCancelled(at_ms=0, reason="user")]
    assert is_terminal(state)
    out = when(state, done("a"))
    assert isinstance(out, Refusal) and out.reason is Reason.ALREADY_SETTLED
    assert when(state, c(Cancel)) == []
    assert isinstance(when(state, c(Compensate)), Refusal)


# --- subjects ------------------------------------------------------------------------------------


def test_any_decision_with_a_deviation_is_journaled_under_deviation() -> None:
    dev = Deviation(at_ms=0, workflow_id=W, kind="failed", step="a")
    failed = StepFailed(at_ms=0, step="a", attempt=1, error="x")
    assert significant_kind([failed, dev, WorkflowFailed(at_ms=0)]) == "deviation"
    assert significant_kind([failed, WorkflowFailed(at_ms=0)]) == "failed"
    assert (
        significant_kind(
            [
                StepCompleted(at_ms=0, step="a", attempt=1),
                StepScheduled(at_ms=0, step="b", attempt=1),
            ]
        )
        == "step.completed"
    )
    assert (
        significant_kind(
            [StepCompensated(at_ms=0, step="a", attempt=2), WorkflowCompensated(at_ms=0)]
        )
        == "compensated"
    )
    dispatched = Dispatched(at_ms=0, workflow_id=W, dispatch_id="d", steps=())
    assert significant_kind([dispatched, WorkflowCompleted(at_ms=0)]) == "completed"
    assert significant_kind([dispatched, StepScheduled(at_ms=0, step="a", attempt=1)]) == (
        "dispatched"
    )
    assert significant_kind([StepTimedOut(at_ms=0, step="a", attempt=1, timer="step_timeout")])
    with pytest.raises(ValueError, match="empty"):
        significant_kind([])


def test_command_kinds_name_the_command_subject() -> None:
    assert command_kind(done("a")) == "complete_step"
    assert command_kind(dispatch()) == "dispatch"


# --- purity --------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PURE = ["moon/workflow.py", "moon/rules.py", "moon/replay.py", "streams/moon_events.py"]
IMPURE = {
    "nats",
    "structlog",
    "asyncio",
    "time",
    "random",
    "uuid",
    "os",
    "datetime",
    "ortools",
    "secrets",
    "socket",
    "subprocess",
    "threading",
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", PURE)
def test_the_decider_touches_no_io_clock_or_randomness(module: str) -> None:
    assert not _imports(ROOT / module) & IMPURE
