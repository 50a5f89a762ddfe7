"""The heuristic rounds of a solve: the first plan (serial SGS, then sampling with
forward-backward improvement, fbi.py) and the genetic algorithm between the two CP-SAT rounds
(ga.py, on the compiled kernels once maestro/jit.py has them).

The shell around the pure searches: it owns the clock and the random source, and turns a share
of the time limit into their stop test (or, in deterministic mode, into a schedule count).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from maestro import fbi, ga, jit
from maestro.options import Deadline, SolveOptions
from maestro.problem import Problem, Schedule, violations
from maestro.sgs import serial_sgs

__all__ = ["FIRST_CAP_S", "FIRST_STALL", "GA_SHARE", "first_plan", "genetic"]

FIRST_CAP_S = 1.0
# Samples in a row without a better schedule before the first heuristic hands over to CP-SAT.
# Measured on the full j30 set at 8 s: with no stall the heuristic used its whole share (p50
# 0.81 s, all 480 at the optimum); on a j120 sample a full 0.8-2.4 s share did not beat one
# justified pass (2.8-3.1 % vs 2.8 % mean gap, within noise), so a short phase is all it earns.
FIRST_STALL = 10
# Share of the limit for the genetic algorithm between the two CP-SAT rounds (unproven after the
# quick round). On hard j120 instances 3 s of GA alone matched 8 s of CP-SAT on 2 loaded cores.
GA_SHARE = 0.4
# Deterministic mode's schedule budget per second of a share. The first plan's: about what the
# Python kernels build per second on j120. The GA's: a quarter of what the compiled kernels build
# on j120 (~85,000 a second quiet), so a loaded machine still finishes it within the share.
FIRST_RATE = 1000
GA_RATE = 20_000
# Beside a CP-SAT round (up to solve.BESIDE_MAX_TASKS), the GA stops after this many fruitless
# restarts: on j30 it settles within ~0.5 s of its 3.2 s share and cannot find the last needles
# (j3029_8, j3013_2: 200,000 schedules, 4 seeds, none at the optimum) that CP-SAT finds when it
# has the cores; alone (larger problems) it uses its whole share, since CP-SAT is not running.
BESIDE_PATIENCE = 1


def _target(problem: Problem) -> int:
    return fbi.lower_bound(problem) if problem.objective == "makespan" else 0


def first_plan(problem: Problem, opts: SolveOptions, deadline: Deadline) -> Schedule | None:
    """Serial SGS, then sampling + forward-backward improvement within its share of the limit,
    until FIRST_STALL samples in a row bring nothing better. None if the SGS finds no valid
    schedule."""
    base = serial_sgs(problem)
    if base is None or violations(problem, base):
        return None
    if not fbi.applies(problem):
        return base
    share = min(FIRST_CAP_S, opts.heuristic_share * opts.time_limit_s)
    count, until = _budget(opts, deadline, share, FIRST_RATE)
    return fbi.improve(problem, base, random.Random(opts.seed), max_schedules=count,
                       stop=lambda: time.monotonic() >= until, target=_target(problem),
                       stall=FIRST_STALL)


def genetic(
    problem: Problem,
    opts: SolveOptions,
    deadline: Deadline,
    start: Schedule,
    *,
    halt: Callable[[], bool] | None = None,
) -> Schedule:
    """The genetic algorithm from `start` for GA_SHARE of the limit (or until `halt()`); never
    worse than `start`."""
    if not fbi.applies(problem):
        return start
    share = GA_SHARE * opts.time_limit_s
    count, until = _budget(opts, deadline, share, GA_RATE)
    if opts.deterministic:
        # The count is sized for the compiled kernels: wait for them (only a cold compile takes
        # this long; a cache load is done by now) while half the share is left, so the count is
        # reached and a replay gives the same plan. Without numba the clock cuts the count.
        jit.wait(max(0.0, until - share / 2 - time.monotonic()))
    return ga.evolve(problem, start, random.Random(opts.seed), max_schedules=count,
                     stop=lambda: time.monotonic() >= until or (halt is not None and halt()),
                     target=_target(problem),
                     patience=ga.PATIENCE if halt is None else BESIDE_PATIENCE)


def _budget(opts: SolveOptions, deadline: Deadline, share: float, rate: int) -> tuple[int, float]:
    """(schedule count, monotonic stop time). Deterministic: a count, cut only half the limit
    before the deadline (a replay on a loaded machine may then differ, but never overruns).
    Otherwise: the clock."""
    if opts.deterministic:
        return int(rate * share), deadline.at - opts.time_limit_s / 2
    return 1 << 30, min(deadline.at, time.monotonic() + share)
