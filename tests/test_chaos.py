"""The chaos run, short: 40 workflows while the engine, the executors and the broker are killed -9
twenty times (benchmarks/chaos.py; the long run is 200 workflows and 100 kills)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streams.broker import find_server_binary

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
def test_twenty_kills_lose_no_event_rerun_no_completed_step_and_every_journal_replays() -> None:
    try:
        find_server_binary()
    except FileNotFoundError as error:
        pytest.skip(str(error))
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
