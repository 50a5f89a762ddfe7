"""benchmarks/load.py end to end, briefly: real processes, signed dispatches, its JSON summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.usefixtures("server_binary")
def test_a_short_load_completes_every_dispatch_without_errors_or_growth() -> None:
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


@pytest.mark.slow
@pytest.mark.usefixtures("server_binary")
def test_the_compare_mode_stubs_ed25519_only_in_the_unsigned_world() -> None:
    """Both worlds complete every dispatch; the unsigned one really runs without ed25519 (its
    children's probe sign is stubbed, its gate takes a zero signature, its journal carries only
    zero signatures) while the signed one refuses a zero signature and signs for real."""
    done = subprocess.run(
        [sys.executable, "benchmarks/load.py", "--compare-unsigned", "--seconds", "1.5",
         "--clients", "4", "--warmup", "0.5", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["pass"] is True, summary["failures"]
    checks = summary["stub_checks"]
    assert checks["signed"]["zero_sig_dispatch"] == "refused:bad_signature"
    assert checks["unsigned"]["zero_sig_dispatch"] == "accepted"
    # Whether a probe signature verifies, not how long it took: a busy machine slows a stub too.
    assert all(checks["signed"]["probe_real"].values())
    assert not any(checks["signed"]["stubbed"].values())
    assert not any(checks["unsigned"]["probe_real"].values())
    assert all(checks["unsigned"]["stubbed"].values())
    wire = summary["journal_statements_seen"]
    assert wire["signed"]["zero"] == 0 < wire["signed"]["signed"]
    assert wire["unsigned"]["zero"] == wire["unsigned"]["signed"] > 0
    for mode in ("signed", "unsigned"):
        figures = summary["modes"][mode]
        assert figures["dispatch_per_s"][0] > 0
        assert figures["crypto_per_dispatch"]["engine"]["verifies"] >= 1
        workflow = summary["per_3_step_workflow"][mode]
        assert workflow["engine"]["signs"] > 0
    assert summary["modes"]["signed"]["crypto_per_dispatch"]["engine"]["crypto_ms"] > 0
    assert summary["modes"]["unsigned"]["crypto_per_dispatch"]["engine"]["crypto_ms"] == 0
    assert summary["throughput_signed_over_unsigned"] > 0
    assert summary["micro_us"]["200B"]["verify_us"] > 0
