"""The README's first command: `maestro demo` plans, runs, fails, replans, audits, replays, and
exits 0, leaving its data for `moon list`/`moon replay` (run as a user runs it: a process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .test_up import maestro_up

ROOT = Path(__file__).resolve().parents[1]


def _cli(tool: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    # A user's shell: none of the test session's broker settings (its seeds included).
    env = {k: v for k, v in os.environ.items()
           if k not in ("NATS_URL", "MAESTRO_SPACE", "NATS_NKEY", "MAESTRO_CREDS")}
    env.update(MAESTRO_HOME=str(home), COLUMNS="160")
    return subprocess.run(
        [sys.executable, "-c", f"from {tool}.cli import main; main()", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )


@pytest.mark.slow
@pytest.mark.usefixtures("server_binary")
def test_maestro_demo_runs_the_story_and_leaves_a_replayable_journal(tmp_path: Path):
    home = tmp_path / "home"
    demo = _cli("maestro", "demo", home=home)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = " ".join(demo.stdout.split())  # rich wraps lines to the terminal's width
    assert "call for bids" in out
    assert "p(on time)" in out
    assert "-> globex-llm" in out  # the replan moved the failed step to the backup
    assert "state equals live: True" in out
    assert "0 mismatches" in out
    # The demo's broker went with it: its journal is read on the stack `maestro up` runs
    # on the same data dir (no command starts a broker behind the user's back).
    # The commands its last line suggests work as it says to run them: with `maestro up`.
    hint = re.search(r"start `maestro up`.*?`moon status ([\w-]+)`", out)
    assert hint is not None, out[-1000:]
    with maestro_up(home, tmp_path, executors=False):
        listed = _cli("moon", "list", "--json", home=home)
        status = _cli("moon", "status", hint.group(1), home=home)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert '"completed"' in listed.stdout
    assert status.returncode == 0 and "workflow.completed" in status.stdout, status.stderr
