"""The time limit is a wall-clock promise: with a busy process on every core, a solve (either
mode) and a whole `plan_goal` return within the limit plus STOP_GRACE_S, with a plan and a bound.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maestro import psplib
from maestro.goal import Goal, Step
from maestro.planner import plan_goal
from maestro.solve import SolveOptions, available_workers, solve
from tests.maestro.conftest import offer

# The promise stated in the issue: S + 0.3 s of wall time on a loaded machine.
STOP_GRACE_S = 0.3
LIMIT_S = 1.5


def _find_psplib() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "benchmarks" / "psplib"
        if candidate.is_dir():
            return candidate
    return None


def _spin() -> None:  # pragma: no cover - runs in the child
    while True:
        pass


@pytest.fixture(name="loaded")
def _loaded() -> Iterator[int]:
    """One busy process per core this process may use; killed after the test."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spin, daemon=True) for _ in range(available_workers())]
    for p in procs:
        p.start()
    time.sleep(0.2)  # let them get scheduled before the clock starts
    try:
        yield len(procs)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.join(5)


def test_workers_follow_the_affinity_mask() -> None:
    assert available_workers() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("name", ["j120/j12056_1", "j60/j6013_3"])
def test_a_hard_instance_returns_within_the_limit_on_a_loaded_machine(
    loaded: int, deterministic: bool, name: str
) -> None:
    """j12056_1 and j6013_3 (scarce resources, not proven in 8 s; the second small enough for a
    CP-SAT round beside the GA): the call ends in time with the best plan found and a bound
    below it."""
    root = _find_psplib()
    if root is None:
        pytest.skip("PSPLIB data not found next to the repository")
    problem = psplib.to_problem(psplib.load(root / f"{name}.sm"))
    t0 = time.monotonic()
    plan = solve(problem, SolveOptions(time_limit_s=LIMIT_S, deterministic=deterministic))
    wall = time.monotonic() - t0
    assert wall <= LIMIT_S + STOP_GRACE_S, f"{wall:.2f} s with {loaded} busy processes"
    assert plan.status in ("feasible", "optimal")
    assert plan.makespan is not None
    assert plan.bound is not None
    assert plan.bound <= plan.makespan


FIRST_CALL = """
import json, sys, time
from maestro import jit, psplib
from maestro.solve import SolveOptions, solve
problem = psplib.to_problem(psplib.load(sys.argv[1]))
t0 = time.monotonic()
plan = solve(problem, SolveOptions(time_limit_s=float(sys.argv[2]),
                                   deterministic=sys.argv[3] == "1"))
wall = time.monotonic() - t0
print(json.dumps({"wall": wall, "status": plan.status, "jit_ready": jit.compiled() is not None}))
"""


@pytest.mark.parametrize("deterministic", [True, False])
def test_the_first_call_in_a_fresh_process_compiles_outside_the_limit(
    loaded: int, deterministic: bool, tmp_path: Path
) -> None:
    """A fresh process with numba's cache empty: the kernels compile in the background for
    seconds (longer with every core busy) while the solve runs on the Python kernels, and the
    call still ends within the limit."""
    root = _find_psplib()
    if root is None:
        pytest.skip("PSPLIB data not found next to the repository")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_CALL, str(root / "j120" / "j12056_1.sm"), str(LIMIT_S),
         "1" if deterministic else "0"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["wall"] <= LIMIT_S + STOP_GRACE_S, f"{out} with {loaded} busy processes"
    assert out["status"] in ("feasible", "optimal")


def _big_goal(n: int) -> Goal:
    rng = random.Random(7)
    steps = tuple(
        Step(
            f"s{i}",
            rng.choice(["w", "v"]),
            needs=tuple(sorted({f"s{rng.randrange(i)}" for _ in range(2)})) if i else (),
            duration_ms=rng.randint(5, 40),
        )
        for i in range(n)
    )
    return Goal("big", steps, objective="makespan")


def test_a_whole_plan_with_anticipation_returns_within_the_limit(loaded: int) -> None:
    """plan_goal: solve + Monte Carlo anticipation share one deadline."""
    offers = [
        offer("x", ("w", 20, 3), ("v", 30, 1)),
        offer("y", ("w", 25, 2), ("v", 10, 4), capacity=2),
        offer("z", ("v", 15, 2), reliability=0.9),
    ]
    t0 = time.monotonic()
    outcome = plan_goal(
        _big_goal(120),
        offers,
        options=SolveOptions(time_limit_s=LIMIT_S),
        rng=random.Random(0),
        samples=2000,
    )
    wall = time.monotonic() - t0
    assert wall <= LIMIT_S + STOP_GRACE_S, f"{wall:.2f} s with {loaded} busy processes"
    assert outcome.plan.status in ("feasible", "optimal")
    assert outcome.anticipation is not None
