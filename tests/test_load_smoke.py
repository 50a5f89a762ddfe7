"""benchmarks/load.py end to end, briefly: real processes, signed dispatches, its JSON summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streams.broker import find_server_binary

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_short_load_completes_every_dispatch_without_errors_or_growth() -> None:
    try:
        find_server_binary()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    done = subprocess.run(
        [sys.executable, "benchmarks/load.py", "--seconds", "3", "--clients", "4",
         "--warmup", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["pass"] is True, summary["failures"]
    assert summary["dispatches"] > 0
    assert summary["errors"] == 0, summary["error_kinds"]
    assert summary["completed"] == summary["accepted"] == summary["dispatches"]
    assert summary["raw_requests"] > 0
    assert summary["median"]["dispatch_p50_ms"] > 0
    assert summary["ratios"]["throughput_moon_over_raw"] > 0
    processes = {"broker", "engine", "x1", "x2", "echo", "bench"}
    assert set(summary["memory"]) == processes
    for name, figures in summary["memory"].items():
        assert figures["start_mib"] > 0, name
        assert figures["end_mib"] > 0, name
        assert figures["ok"], (name, figures)
    assert summary["dead"] == []
    assert summary["cpu"]["moon_ms_per_dispatch"]["engine"] > 0
