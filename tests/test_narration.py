"""Services that talk (moon/narration.py): a log line per step transition and per replan, each
said once for a newly journaled decision; and each service says which broker it joined."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from moon.narration import joined, narrate, narration
from streams.moon_events import (
    CompensationFailed,
    ReplanApplied,
    RetryScheduled,
    StepCheckpointed,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepHeartbeat,
    StepScheduled,
    StepStarted,
    Usage,
    WorkflowCompensated,
)

from .surfaces.world import free_port

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))


def test_each_step_transition_is_one_line_and_chatter_none() -> None:
    log = Recorder()
    narrate(log, "wf-1", [
        StepScheduled(at_ms=1, step="a", attempt=1),
        StepStarted(at_ms=2, step="a", attempt=1, executor="x"),
        StepHeartbeat(at_ms=3, step="a", attempt=1),
        StepCheckpointed(at_ms=3, step="a", attempt=1, state=b"s"),
        StepFailed(at_ms=4, step="a", attempt=1, error="boom " * 200, error_type="E",
                   will_retry=True),
        RetryScheduled(at_ms=4, step="a", attempt=2, delay_ms=1000, due_ms=1004),
        StepCompleted(at_ms=5, step="a", attempt=2, usage=Usage(tokens=7, wall_ms=9)),
        StepCompensated(at_ms=6, step="a", attempt=3),
    ])
    events = [(level, event) for level, event, _ in log.lines]
    assert events == [("info", "step_scheduled"), ("info", "step_started"),
                      ("warning", "step_failed"), ("info", "step_retry_scheduled"),
                      ("info", "step_completed"), ("info", "step_compensated")]
    assert all(fields["workflow"] == "wf-1" for _, _, fields in log.lines)
    failed = log.lines[2][2]
    assert failed["error"].startswith("boom") and len(failed["error"]) == 300
    assert failed["will_retry"] is True and log.lines[0][2]["executor"] == "any"
    assert log.lines[4][2]["tokens"] == 7


def test_a_replan_and_a_failed_compensation_are_said_as_such() -> None:
    replan = narration("wf", ReplanApplied(at_ms=1, plan_id="p", revision=2,
                                           assignments={"b": "y", "a": "x"}, reason="late a"))
    assert replan is not None and replan.event == "replan_applied"
    assert replan.fields["revision"] == 2 and list(replan.fields["assignments"]) == ["a", "b"]
    broken = narration("wf", CompensationFailed(at_ms=1, step="a", attempt=3, error="no"))
    assert broken is not None and broken.level == "warning"
    ended = narration("wf", WorkflowCompensated(at_ms=2, failed=("a",)))
    assert ended is not None and ended.event == "workflow_compensation_failed"


def test_joined_names_the_broker_without_credentials() -> None:
    said = joined("nats://user:secret@127.0.0.1:4222", "/data", "", "engine")
    assert said == {"broker": "nats://127.0.0.1:4222", "data_dir": "/data", "space": "-",
                    "role": "engine"}


@pytest.mark.parametrize("cli", ["moon.cli", "maestro.cli", "surfaces.serve"])
def test_a_service_says_which_broker_and_data_dir_it_joined(cli: str, nats_url: str,
                                                            tmp_path: Path) -> None:
    env = {**os.environ, "NATS_URL": nats_url, "MAESTRO_SPACE": f"j{os.getpid()}"}
    port = ["--port", str(free_port())] if cli == "surfaces.serve" else []
    proc = subprocess.Popen([sys.executable, "-c", f"from {cli} import main; main()", "serve",
                             "--data-dir", str(tmp_path / "home"), *port], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    guard = threading.Timer(30, proc.kill)  # a hung start fails the test instead of hanging it
    guard.start()
    try:
        assert proc.stdout is not None
        said: list[str] = []
        seen: list[str] = []
        for line in proc.stdout:
            seen.append(line)
            if '"joined"' in line:
                said.append(line)
                break
    finally:
        guard.cancel()
        proc.terminate()
        proc.wait(10)
    assert said, f"{cli} serve never said which broker it joined: {''.join(seen)[-2000:]}"
    assert nats_url.removeprefix("nats://") in said[0] and str(tmp_path / "home") in said[0]
