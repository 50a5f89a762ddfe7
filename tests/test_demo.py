"""The README's first command: `maestro demo` plans, runs, fails, replans, audits, replays, and
exits 0, leaving its data for `moon list`/`moon replay` (run as a user runs it: a process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.broker import find_server_binary

ROOT = Path(__file__).resolve().parents[1]


def _cli(tool: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "MAESTRO_SPACE")}
    env.update(MAESTRO_HOME=str(home), COLUMNS="160")
    return subprocess.run(
        [sys.executable, "-c", f"from {tool}.cli import main; main()", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )


@pytest.mark.slow
def test_maestro_demo_runs_the_story_and_leaves_a_replayable_journal(tmp_path: Path):
    try:
        find_server_binary()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    home = tmp_path / "home"
    demo = _cli("maestro", "demo", home=home)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = " ".join(demo.stdout.split())  # rich wraps lines to the terminal's width
    assert "call for bids" in out
    assert "p(on time)" in out
    assert "-> globex-llm" in out  # the replan moved the failed step to the backup
    assert "state equals live: True" in out
    assert "0 mismatches" in out
    listed = _cli("moon", "list", "--json", home=home)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert '"completed"' in listed.stdout
