"""Properties of the decider: redelivery is harmless, and the journal is the state."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moon.replay import fold, verify
from moon.workflow import WorkflowState, apply, decide, initial
from streams.moon_events import (
    Compensate,
    CompleteStep,
    Decision,
    Dispatch,
    FailStep,
    FireTimer,
    MoonCommand,
    MoonEvent,
    Replan,
    RetryPolicy,
    StartStep,
    StepSpec,
    Usage,
)
from streams.replies import Refusal

W = "wp"
_command_codec = msgspec.json.Decoder(MoonCommand)
_event_codec = msgspec.json.Decoder(MoonEvent)
_decisions = msgspec.json.Decoder(list[Decision])


@st.composite
def workflows(draw: st.DrawFn) -> tuple[Dispatch, dict[str, int]]:
    """A random DAG (edges only to earlier steps) and how often each step fails first."""
    n = draw(st.integers(1, 6))
    steps, failures = [], {}
    for i in range(n):
        needs = draw(st.sets(st.sampled_from(range(i)), max_size=3)) if i else set()
        steps.append(
            StepSpec(
                id=f"s{i}",
                capability=f"do.{i}",
                needs=tuple(f"s{j}" for j in sorted(needs)),
                compensation=f"undo.{i}" if draw(st.booleans()) else None,
                retry=RetryPolicy(maximum_attempts=3, initial_interval_ms=10),
                executor="x",
            )
        )
        failures[f"s{i}"] = draw(st.integers(0, 3))
    budget = draw(st.one_of(st.none(), st.integers(5, 40)))
    dispatch = Dispatch(
        command_id="d", workflow_id=W, at_ms=0, steps=tuple(steps), budget_tokens=budget
    )
    return dispatch, failures


def _step(state: WorkflowState, command: MoonCommand) -> tuple[WorkflowState, list[MoonEvent]]:
    out = decide(command, state)
    if isinstance(out, Refusal) or not out:
        return state, []
    return apply(state, Decision(command=command, events=out)), out


def clean_run(data: st.DataObject) -> tuple[list[MoonCommand], list[Decision], WorkflowState]:
    """Drive one workflow to rest the way a well-behaved world would, choosing at random."""
    dispatch, failures = data.draw(workflows())
    left = dict(failures)
    state, events = _step(initial, dispatch)
    commands: list[MoonCommand] = [dispatch]
    decisions = [Decision(command=dispatch, events=events)]
    clock, revision, compensated = 0, 0, False
    while True:
        actions: list[tuple[str, str]] = []
        for k, s in state.steps.items():
            if s.status == "scheduled" or (s.status == "compensating" and s.started_at is None):
                actions.append(("start", k))
            elif s.status in ("running", "compensating"):
                actions.append(("finish", k))
            elif s.status in ("backoff", "compensation_backoff"):
                actions.append(("retry", k))
        if state.status == "running" and not compensated:
            actions.append(("compensate", ""))
            if revision < 2 and (
                state.halted or any(s.status == "failed" for s in state.steps.values())
            ):
                actions.append(("replan", ""))
        if not actions:
            return commands, decisions, state
        action, k = data.draw(st.sampled_from(actions))
        clock += 1
        base: dict[str, Any] = {"command_id": f"c{clock}", "workflow_id": W, "at_ms": clock}
        command: MoonCommand
        if action == "start":
            command = StartStep(**base, step=k, attempt=state.steps[k].attempt, executor="x")
        elif action == "finish":
            attempt = state.steps[k].attempt
            if left[k] > 0:
                left[k] -= 1
                command = FailStep(
                    **base, step=k, attempt=attempt, error="flaky", usage=Usage(tokens=1)
                )
            else:
                command = CompleteStep(
                    **base,
                    step=k,
                    attempt=attempt,
                    result=k.encode(),
                    usage=Usage(tokens=2, wall_ms=3, joules=0.25),
                )
        elif action == "retry":
            attempt = state.steps[k].attempt + 1
            # A backoff timer fires once due, never earlier (the decider ignores an early one).
            due = state.steps[k].retry_due_ms or 0
            command = FireTimer(**{**base, "at_ms": max(clock, due)}, kind="retry_backoff",
                                step=k, attempt=attempt)
        elif action == "compensate":
            compensated = True
            command = Compensate(**base, reason="property")
        else:
            revision += 1
            left = {step: max(0, n - 1) for step, n in left.items()}
            command = Replan(
                **base,
                plan_id="p",
                revision=revision,
                assignments={step: "y" for step in state.steps},
                budget_tokens=1000,
            )
        state, events = _step(state, command)
        commands.append(command)
        if events:
            decisions.append(Decision(command=command, events=events))


def _comparable(state: WorkflowState) -> WorkflowState:
    return msgspec.structs.replace(state, seen=())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_duplicated_commands_leave_the_same_end_state_as_the_clean_order(
    data: st.DataObject,
) -> None:
    """Redelivered commands (same id, or re-sent under a new id) placed anywhere after their
    original change nothing: the end state equals the clean run's."""
    commands, clean_decisions, clean = clean_run(data)
    noisy: list[MoonCommand] = list(commands)
    for command in commands:
        for n in range(data.draw(st.integers(0, 2))):
            duplicate = command
            if data.draw(st.booleans()):
                # a re-sent report gets a new id and is stamped later by the shell
                duplicate = msgspec.structs.replace(
                    command, command_id=f"{command.command_id}-again{n}", at_ms=command.at_ms + 1000
                )
            # after the original: a redelivery never overtakes what it repeats
            original = noisy.index(command)
            noisy.insert(data.draw(st.integers(original + 1, len(noisy))), duplicate)
    state, decisions = initial, list[Decision]()
    for command in noisy:
        state, events = _step(state, command)
        if events:
            decisions.append(Decision(command=command, events=events))
    assert _comparable(state) == _comparable(clean)
    assert [d.events for d in decisions] == [d.events for d in clean_decisions]
    assert verify(decisions) == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_command_and_event_round_trips_and_folding_the_stored_bytes_gives_the_live_state(
    data: st.DataObject,
) -> None:
    commands, decisions, live = clean_run(data)
    for command in commands:
        assert _command_codec.decode(msgspec.json.encode(command)) == command
    for decision in decisions:
        for event in decision.events:
            assert _event_codec.decode(msgspec.json.encode(event)) == event
    stored = _decisions.decode(msgspec.json.encode(decisions))
    assert stored == decisions
    assert fold(stored) == live
    assert verify(stored) == []
