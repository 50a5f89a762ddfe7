"""The chaos run, short: 40 workflows while the engine, the executors and the broker are killed -9
twenty times (benchmarks/chaos.py; the long run is 200 workflows and 100 kills). And what the
long run found, pinned small."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from envelope.keys import KeyRing
from envelope.statement import TIMER, open_statement
from moon.clock import local_ms as now_ms
from moon.effects import COMMANDS
from streams.moon_events import FailStep, FireTimer, RetryPolicy, StartStep
from streams.replies import Refusal

from . import walls as tw
from .moon.engine_world import dispatch, new_engine, step

ROOT = Path(__file__).resolve().parents[1]
KILLS, WORKFLOWS = 20, 40


def run_chaos(*args: str, timeout_s: float) -> tuple[dict, str]:  # type: ignore[type-arg]
    """The driver in its own process group: on a timeout the broker, engine and executors it
    started go down with it instead of outliving the test."""
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "chaos.py"), *args, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = driver.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate()
        pytest.fail(f"the chaos run took more than {timeout_s} s")
    lines = out.splitlines()
    assert lines, err[-3000:]
    return json.loads(lines[-1]), err


@pytest.mark.slow
@pytest.mark.usefixtures("server_binary")
def test_twenty_kills_lose_no_event_rerun_no_completed_step_and_every_journal_replays() -> None:
    tally, err = run_chaos("--seed", "7", "--workflows", str(WORKFLOWS), "--kills", str(KILLS),
                           "--interval-s", "1.0", "--settle-s", "90", timeout_s=170)
    assert tally["failures"] == [], (tally, err[-3000:])
    assert tally["ok"]
    # the kills happened, to every kind of process
    assert sum(tally["kills"].values()) >= KILLS
    assert {k for k, n in tally["kills"].items() if n} == {"engine", "executor", "broker"}
    assert tally["reads_before_kills"] == KILLS
    # every workflow ended as seeded: the ones with a failing step compensated
    assert tally["completed"] + tally["compensated"] == WORKFLOWS
    assert tally["compensated"] == tally["compensated_seeded"] > 0
    assert tally["unexpected"] == 0
    # nothing completed ran twice, nothing acknowledged was lost, every journal replays
    assert tally["keys_done_twice"] == tally["completions_run_twice"] == 0
    assert tally["completions_without_effect"] == 0
    assert tally["lost_events"] == tally["changed_events"] == tally["unseen_inserted"] == 0
    assert tally["journal_events"] > 0
    assert tally["verify_mismatches"] == tally["fold_vs_read"] == 0
    assert tally["engine_view_mismatches"] == tally["index_mismatches"] == 0


async def test_a_timer_lost_between_the_append_and_the_schedule_is_armed_on_redelivery(
    nc, js, space
) -> None:
    """Seed 1 of the long run: the engine journaled a RetryScheduled, the broker was killed before
    the retry_backoff schedule reached it, the engine was killed before its publish timed out; the
    next engine got the command back, decided nothing (seen) and re-sent in-flight orders only.
    The step stayed in backoff with no timer and no order: the workflow never ended."""
    first = await new_engine(nc, space)
    command = dispatch([step("s", retry=RetryPolicy(maximum_attempts=3,
                                                    initial_interval_ms=60_000))])
    await first.submit(command)
    x1 = await tw.as_executor(js, space, "x1", ["work"])
    await first.submit(StartStep(command_id="start-s-1", workflow_id=command.workflow_id,
                                 at_ms=now_ms(), step="s", attempt=1, executor="x1"), source=x1)
    failed = FailStep(command_id="fail-s-1", workflow_id=command.workflow_id, at_ms=now_ms(),
                      step="s", attempt=1, error="flaky")

    async def killed(*_: object, **__: object) -> None:
        raise ConnectionError("kill -9 between the append and the schedule")

    # The broker lost the workflow's wake-up, and the engine dies before it arms another.
    await first.effects.disarm(command.workflow_id)
    first.effects.arm = killed  # type: ignore[method-assign]
    with contextlib.suppress(ConnectionError):
        await first.submit(failed, source=x1)  # journaled: StepFailed(will_retry), RetryScheduled
    again = await new_engine(nc, space)
    await again.submit(failed, source=x1, redelivered=True)  # the command comes back
    wake = space.subject(f"moon.timer.{command.workflow_id}.wake")
    armed = await js.get_last_msg(space.stream("MOON_CMD"), wake)
    assert again.walls.signer is not None
    verified = open_statement(armed.data, TIMER, keys=KeyRing(),
                              authors={again.walls.signer.did})
    assert not isinstance(verified, Refusal), verified
    fire = COMMANDS.decode(verified.body)
    retry = (await again.state(command.workflow_id)).steps["s"].retry_due_ms
    assert isinstance(fire, FireTimer) and fire.kind == "wake" and fire.at_ms == retry
