"""The GA's kernels give the same schedules as Python and compiled (so a deterministic solve
does not depend on whether numba was ready), also when the compiled ones arrive mid-search; and
they compile where no cache directory is writable."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maestro import ga, jit, psplib
from maestro.problem import Problem, violations
from maestro.sgs import serial_sgs
from tests.maestro.test_fbi import problems
from tests.maestro.test_time_limit import _find_psplib

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    if not jit.wait(120):
        pytest.skip(f"no compiled kernels here: {jit.failure()}")


def _run(problem: Problem, seed: int, budget: int, *, compiled: bool) -> Any:
    first = serial_sgs(problem)
    assert first is not None
    return ga.evolve(problem, first, random.Random(seed), max_schedules=budget,
                     stop=lambda: False, compiled=compiled)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.integers(0, 5), st.integers(3, 600))
def test_python_and_compiled_kernels_give_the_same_schedule(
    problem: Problem, seed: int, budget: int
) -> None:
    slow = _run(problem, seed, budget, compiled=False)
    fast = _run(problem, seed, budget, compiled=True)
    assert violations(problem, fast) == []
    assert fast == slow


@settings(max_examples=30, deadline=None)
@given(problems(), st.integers(0, 5), st.integers(1, 30))
def test_compiled_kernels_arriving_mid_search_change_nothing(
    problem: Problem, seed: int, after: int
) -> None:
    """jit.compiled() says "not yet" for the first `after` asks, as while numba compiles."""
    ready = jit.compiled
    asked = [0]

    def late() -> Any:
        asked[0] += 1
        return ready() if asked[0] > after else None

    patched: Callable[[], Any] = late
    jit.compiled = patched  # type: ignore[assignment]
    try:
        switched = _run(problem, seed, 900, compiled=True)
    finally:
        jit.compiled = ready  # type: ignore[assignment]
    assert switched == _run(problem, seed, 900, compiled=False)


def test_a_real_instance_gives_the_same_schedule_both_ways() -> None:
    root = _find_psplib()
    if root is None:
        pytest.skip("PSPLIB data not found next to the repository")
    problem = psplib.to_problem(psplib.load(root / "j120" / "j12011_3.sm"))
    assert _run(problem, 3, 1500, compiled=True) == _run(problem, 3, 1500, compiled=False)


NO_CACHE = """
from maestro import jit
assert jit.wait(300), jit.failure()
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_where_no_cache_directory_is_writable() -> None:
    """A read-only install: numba finds no cache locator (the only one left here applies to
    zipped sources) and refuses cache=True; the kernels compile uncached instead."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"}
    done = subprocess.run([sys.executable, "-c", NO_CACHE], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("compiled")
