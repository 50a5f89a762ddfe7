"""A retry goes where the plan sends the step, not to the executor that was lost running it."""

from __future__ import annotations

from moon.workflow import apply, decide, initial
from streams.moon_events import (
    Decision,
    Dispatch,
    FireTimer,
    RetryPolicy,
    StartStep,
    StepScheduled,
    StepSpec,
)


def run(*commands):
    state = initial
    out = []
    for command in commands:
        events = decide(command, state)
        assert isinstance(events, list), events
        state = apply(state, Decision(command=command, events=events))
        out.append(events)
    return state, out


def spec(executor=None):
    return StepSpec(id="s", capability="work", executor=executor, heartbeat_timeout_ms=1000,
                    retry=RetryPolicy(maximum_attempts=3, initial_interval_ms=10))


def test_a_pool_step_lost_with_its_executor_is_retried_on_the_pool():
    state, events = run(
        Dispatch(command_id="d", workflow_id="w", at_ms=0, steps=(spec(),)),
        StartStep(command_id="st", workflow_id="w", at_ms=5, step="s", attempt=1, executor="w1"),
        FireTimer(command_id="hb", workflow_id="w", at_ms=1005, kind="heartbeat_timeout",
                  step="s", attempt=1),
        FireTimer(command_id="rb", workflow_id="w", at_ms=2000, kind="retry_backoff",
                  step="s", attempt=2),
    )
    retry = [e for e in events[-1] if isinstance(e, StepScheduled)]
    assert retry == [StepScheduled(at_ms=2000, step="s", attempt=2, executor=None)]
    assert state.steps["s"].assigned is None


def test_a_planned_step_is_retried_on_its_planned_executor():
    _, events = run(
        Dispatch(command_id="d", workflow_id="w", at_ms=0, steps=(spec("x1"),)),
        StartStep(command_id="st", workflow_id="w", at_ms=5, step="s", attempt=1, executor="x1"),
        FireTimer(command_id="hb", workflow_id="w", at_ms=1005, kind="heartbeat_timeout",
                  step="s", attempt=1),
        FireTimer(command_id="rb", workflow_id="w", at_ms=2000, kind="retry_backoff",
                  step="s", attempt=2),
    )
    assert [e.executor for e in events[-1] if isinstance(e, StepScheduled)] == ["x1"]
