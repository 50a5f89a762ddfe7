"""A genetic algorithm over activity lists with forward-backward improvement (Hartmann 1998;
Valls, Ballestin & Quintanilla 2008): a stronger first plan than sampling alone for CP-SAT to
hint from and to bound its search with.

Each individual is a precedence-feasible activity list; it is scheduled by the serial SGS, then
justified once (right, then left), and its list is rewritten as the justified schedule's start
order, so the next generation inherits the improvement. Two-point crossover keeps precedence
feasibility by construction; mutation swaps neighbours that have no arc between them; the best
`population` distinct schedules of parents and children survive; after RESTART generations
without a better best, all but the best are sampled afresh.

The loops are maestro/kernels.py: Python until maestro/jit.py has them compiled, then compiled
(switched between two generations; the results are the same). This module is the driver: it
builds the kernels' arrays, keeps the schedule budget and asks the stop test.

Pure but for the kernels' runtime: the random source and the stop test are passed in by the
shell (heuristic.py). Same scope as fbi.improve: finish-to-start edges with lags >= 0, no
pinned, done or released tasks, modes kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from maestro import fbi, jit, kernels
from maestro.problem import Problem, Schedule, schedule_makespan, violations

__all__ = ["evolve"]

# Measured at 8 s on 18 hard j120 instances (RS 0.1-0.2, RF >= 0.5; load ~2.4) with the compiled
# kernels: population 40 and no restarts 5.33 % mean gap (it stalls within ~10,000 schedules),
# 100 without restarts 4.02 %, 100 restarting after 30 stale generations 3.43 % (after 15:
# 3.84 %), 150 / 30: 3.34 %, 200 without: 3.87 %.
POPULATION = 100
# Generations in a row without a better best before all but the best are sampled afresh.
RESTART = 30
# Restarts in a row without a better best before the GA stops early (heuristic.py sets it when a
# CP-SAT round runs beside it, which then has both cores sooner). No limit by default.
PATIENCE = 1 << 30
_NONE = 1 << 40  # "no best yet": above any makespan the time-indexed profile allows


class _Rng(Protocol):
    def random(self) -> float: ...

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int: ...


class _State:
    """The search's arrays: lists for the Python kernels, int64 arrays for the compiled ones
    (converted once, between two generations, when the compiled kernels become ready)."""

    def __init__(self, net: list[list[int]], ws: list[list[int]], pop: list[list[int]],
                 rng: list[int]) -> None:
        self.net: tuple[Any, ...] = tuple(net)
        self.ws: tuple[Any, ...] = tuple(ws)
        self.pop: tuple[Any, ...] = tuple(pop)
        self.rng: Any = rng
        self.fns: dict[str, Callable[..., Any]] = {
            name: getattr(kernels, name) for name in jit.ENTRIES
        }
        self.fast = False
        self.allowed = True

    def upgrade(self) -> None:
        """Switch to the compiled kernels if they are ready (same algorithm, same results)."""
        if self.fast or not self.allowed:
            return
        fns = jit.compiled()
        if fns is None:
            return
        import numpy as np  # noqa: PLC0415 - numba is ready, so numpy is loaded

        def arr(xs: Any) -> Any:
            return np.array(xs, dtype=np.int64)

        self.net = tuple(arr(x) for x in self.net)
        self.ws = tuple(arr(x) for x in self.ws)
        self.pop = tuple(arr(x) for x in self.pop)
        self.rng = arr(self.rng)
        self.fns = fns
        self.fast = True

    def best_start(self) -> list[int]:
        return [int(x) for x in self.pop[5]]

    def best_span(self) -> int:
        return int(self.pop[6][0])


def _net(problem: Problem, modes: Sequence[int]) -> tuple[list[list[int]], int]:
    """The kernels' network arrays (see kernels.py) and the profile's horizon."""
    n = len(problem.tasks)
    r_count = len(problem.resources)
    dur = [t.modes[m].duration for t, m in zip(problem.tasks, modes, strict=True)]
    dem = [0] * (n * r_count)
    for i, (t, m) in enumerate(zip(problem.tasks, modes, strict=True)):
        for r, q in enumerate(t.modes[m].demands):
            dem[i * r_count + r] = max(0, q)
    preds: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    succs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for e in problem.edges:
        preds[e.succ].append((e.pred, e.lag))
        succs[e.pred].append((e.succ, e.lag))
    h = sum(dur) + sum(e.lag for e in problem.edges) + 1
    topo = fbi._topological(n, preds) or list(range(n))
    lft = [h] * n
    for j in reversed(topo):
        for p, lag in preds[j]:
            lft[p] = min(lft[p], lft[j] - dur[j] - lag)

    def csr(lists: list[list[tuple[int, int]]]) -> list[list[int]]:
        ptr, idx, lag = [0], [], []
        for arcs in lists:
            for j, w in arcs:
                idx.append(j)
                lag.append(w)
            ptr.append(len(idx))
        return [ptr, idx or [0], lag or [0]]  # never empty: numba types empty lists poorly

    caps = [max(0, r.capacity) for r in problem.resources]
    return [dur, dem, caps, *csr(preds), *csr(succs), topo, lft], h


def _start(net: list[list[int]], h: int, first: list[int], size: int, rng: _Rng) -> _State:
    """The search's arrays, with `first`'s start order as the list to evaluate first."""
    n = len(net[0])
    r_count = max(1, len(net[2]))
    rank = [0] * n
    for k, i in enumerate(net[9]):
        rank[i] = k
    seed = sorted(range(n), key=lambda i: (first[i], rank[i]))
    ws = [[0] * (r_count * h), [0] * (h + 2), *([0] * n for _ in range(7)), seed]
    pop = [[0] * (2 * size * n), [0] * (2 * size * n), [0] * (2 * size), [0] * (2 * size),
           list(range(2 * size)), [0] * n, [_NONE, 0, 0, size]]
    return _State(net, ws, pop, [rng.randrange(1, 1 << 32) for _ in range(4)])


def evolve(
    problem: Problem,
    schedule: Schedule,
    rng: _Rng,
    *,
    max_schedules: int,
    stop: Callable[[], bool],
    target: int = 0,
    population: int = POPULATION,
    restart: int = RESTART,
    patience: int = PATIENCE,
    compiled: bool = True,
) -> Schedule:
    """The best schedule the GA finds from `schedule` (seeded into the first population) within
    `max_schedules` SGS passes, until `stop()` or the makespan reaches `target`.

    Keeps `schedule`'s modes; never returns a longer or invalid schedule than `schedule`. The
    random source and the budget decide the result, not the clock nor the kernels' runtime
    (`compiled` False keeps the Python kernels throughout: tests compare the two).
    """
    if not fbi.applies(problem) or not problem.tasks:
        return schedule
    modes = [m for m, _ in schedule]
    net, h = _net(problem, modes)
    if h > fbi.MAX_HORIZON:
        return schedule  # the profile is time-indexed: fine in periods, not in milliseconds
    size = max(2, population)
    state = _start(net, h, [s for _, s in schedule], size, rng)
    state.allowed = compiled
    state.upgrade()
    made = 3
    state.fns["evaluate_into"](state.net, state.ws, state.pop, 0)
    npop = 1

    def done() -> bool:
        return state.best_span() <= target or made + 3 > max_schedules or stop()

    def fill(npop: int) -> int:
        nonlocal made
        while npop < size and not done():
            state.upgrade()
            state.fns["sample_into"](state.net, state.ws, state.rng)
            state.fns["evaluate_into"](state.net, state.ws, state.pop, int(state.pop[4][npop]))
            npop += 1
            made += 3
        return npop

    npop = fill(npop)
    stale, last, fruitless, restarted_at = 0, state.best_span(), 0, state.best_span()
    while not done():
        if stale >= restart:
            # stuck: the best stays, fresh samples replace the rest (they share none of its
            # lost diversity); after `patience` such restarts in a row found nothing, the GA
            # gives its core back (to the CP-SAT round beside it, or the next one)
            fruitless = fruitless + 1 if state.best_span() >= restarted_at else 0
            if fruitless >= patience:
                break
            stale, restarted_at = 0, state.best_span()
            npop = fill(1)
            continue
        state.upgrade()
        c = 0
        while c < size:
            room = (max_schedules - made) // 3
            # compiled: the whole generation per call; Python: one child, then the clock
            step = min(size - c if state.fast else 1, room)
            if step <= 0:
                break
            got = state.fns["breed"](state.net, state.ws, state.pop, state.rng, npop, c,
                                     c + step, target)
            c += got
            made += 3 * got
            if got < step or stop():
                break
        npop = state.fns["survive"](state.pop, npop, c)
        stale = stale + 1 if state.best_span() >= last else 0
        last = state.best_span()
    out = tuple(zip(modes, state.best_start(), strict=True))
    if violations(problem, out) or schedule_makespan(problem, out) > schedule_makespan(
        problem, schedule
    ):
        return schedule
    return out
