"""Replay: fold a journal, catch a decision today's rules would not make, diff states, fork."""

from __future__ import annotations

import msgspec

from moon.replay import Change, diff, fold, fork, verify
from moon.workflow import apply, decide, initial
from streams.moon_events import Decision, StepScheduled
from streams.replies import Refusal
from tests.moon.test_workflow import DIAMOND, dispatch, done, fail, given, spec


def journal(*commands: object) -> list[Decision]:
    state, out = initial, list[Decision]()
    for command in commands:
        events = decide(command, state)  # type: ignore[arg-type]
        assert not isinstance(events, Refusal)
        if events:
            decision = Decision(command=command, events=events)  # type: ignore[arg-type]
            out.append(decision)
            state = apply(state, decision)
    return out


def test_fold_rebuilds_the_live_state_and_a_prefix_gives_the_state_then() -> None:
    commands = (dispatch(*DIAMOND), done("a"), done("b"), done("c"), done("d"))
    decisions = journal(*commands)
    assert fold(decisions) == given(*commands)
    assert fold(decisions[:2]) == given(*commands[:2])
    assert fold(decisions[2:], fold(decisions[:2])) == fold(decisions)  # snapshot + tail


def test_verify_passes_a_faithful_journal_and_names_a_tampered_decision() -> None:
    decisions = journal(dispatch(*DIAMOND), done("a"), done("b"))
    assert verify(decisions) == []
    forged = msgspec.structs.replace(
        decisions[1], events=[*decisions[1].events, StepScheduled(at_ms=0, step="d", attempt=1)]
    )
    [mismatch] = verify([decisions[0], forged, decisions[2]])
    assert (mismatch.index, mismatch.command_id) == (1, decisions[1].command.command_id)
    assert mismatch.decided == decisions[1].events


def test_diff_names_status_attempt_and_executor_changes() -> None:
    before = given(dispatch(spec("a", executor="x"), spec("b", "a")))
    after = fold(
        journal(dispatch(spec("a", executor="x"), spec("b", "a")), fail("a")),
    )
    assert diff(before, after) == [
        Change(step="a", field="status", before="scheduled", after="backoff")
    ]
    done_state = given(dispatch(spec("a", executor="x"), spec("b", "a")), done("a"))
    assert Change("b", "status", "pending", "scheduled") in diff(before, done_state)
    assert Change("b", "attempt", 0, 1) in diff(before, done_state)
    assert diff(before, before) == []


def test_fork_starts_a_new_workflow_with_the_completed_steps_carried_over() -> None:
    state = given(dispatch(*DIAMOND), done("a", result=b"A"), done("b", result=b"B"))
    command = fork(state, "w2", at_ms=99)
    assert command.forked_from == "w1"
    assert [(c.step, c.result) for c in command.completed] == [("a", b"A"), ("b", b"B")]
    forked = given(command)
    assert forked.workflow_id == "w2"
    assert {k: s.status for k, s in forked.steps.items()} == {
        "a": "completed",
        "b": "completed",
        "c": "scheduled",
        "d": "pending",
    }
    assert decide(command, forked) == []  # forking twice is one fork
