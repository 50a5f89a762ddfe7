"""A genetic algorithm over activity lists with forward-backward improvement (Hartmann 1998;
Valls, Ballestin & Quintanilla 2008): a stronger first plan than sampling alone for CP-SAT to
hint from and to bound its search with.

Each individual is a precedence-feasible activity list; it is scheduled by the serial SGS, then
justified once (right, then left), and its list is rewritten as the justified schedule's start
order, so the next generation inherits the improvement. Two-point crossover keeps precedence
feasibility by construction; mutation swaps neighbours that have no arc between them; the best
`population` of parents and children survive.

Pure: the random source and the stop test are passed in by the shell (solve.py). Same scope as
fbi.improve: finish-to-start edges with lags >= 0, no pinned, done or released tasks, modes kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from maestro import fbi
from maestro.problem import Problem, Schedule, schedule_makespan, violations

__all__ = ["evolve"]

POPULATION = 40
MUTATION = 0.05


class _Rng(Protocol):
    def random(self) -> float: ...

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int: ...


class _Individual:
    __slots__ = ("makespan", "order", "start")

    def __init__(self, makespan: int, order: list[int], start: list[int]) -> None:
        self.makespan = makespan
        self.order = order
        self.start = start


class _Search:
    """The network plus a fixed topological rank (the tie-break that keeps start-time orders
    precedence-feasible when durations are zero)."""

    def __init__(self, net: fbi._Net) -> None:
        self.net = net
        order = fbi._topological(net.n, net.preds) or list(range(net.n))
        self.rank = [0] * net.n
        for k, i in enumerate(order):
            self.rank[i] = k
        self.arcs = {(p, j) for j, ps in enumerate(net.preds) for p, _ in ps}
        self.made = 0

    def evaluate(self, order: Sequence[int]) -> _Individual:
        """SGS, then one backward-forward pass; the list becomes the best schedule's order."""
        net, rank = self.net, self.rank
        start = fbi._sgs(net, order, net.preds)
        value = fbi._makespan(net, start)
        dur = net.dur
        back = sorted(range(net.n), key=lambda i: (-(start[i] + dur[i]), -rank[i]))
        rs = fbi._sgs(net, back, net.succs)
        top = fbi._makespan(net, rs)
        latest = [top - rs[i] - dur[i] for i in range(net.n)]
        fwd = sorted(range(net.n), key=lambda i: (latest[i], rank[i]))
        again = fbi._sgs(net, fwd, net.preds)
        self.made += 3
        best = fbi._makespan(net, again)
        if best <= value:
            start, value = again, best
        if top < value:  # the backward schedule, shifted, is itself a valid forward one
            start, value = latest, top
        return _Individual(value, sorted(range(net.n), key=lambda i: (start[i], rank[i])), start)

    def crossover(self, mother: Sequence[int], father: Sequence[int], rng: _Rng) -> list[int]:
        n = len(mother)
        q1 = rng.randrange(n + 1)
        q2 = rng.randrange(q1, n + 1)
        child = list(mother[:q1])
        seen = set(child)
        for i in father:
            if len(child) >= q2:
                break
            if i not in seen:
                child.append(i)
                seen.add(i)
        child.extend(i for i in mother if i not in seen)
        return child

    def mutate(self, order: list[int], rng: _Rng) -> None:
        arcs = self.arcs
        for k in range(len(order) - 1):
            if rng.random() < MUTATION and (order[k], order[k + 1]) not in arcs:
                order[k], order[k + 1] = order[k + 1], order[k]


def evolve(
    problem: Problem,
    schedule: Schedule,
    rng: _Rng,
    *,
    max_schedules: int,
    stop: Callable[[], bool],
    target: int = 0,
    population: int = POPULATION,
) -> Schedule:
    """The best schedule the GA finds from `schedule` (seeded into the first population) within
    `max_schedules` SGS passes, until `stop()` or the makespan reaches `target`.

    Keeps `schedule`'s modes; never returns a longer or invalid schedule than `schedule`.
    """
    if not fbi.applies(problem) or not problem.tasks:
        return schedule
    modes = [m for m, _ in schedule]
    net = fbi._Net(problem, modes)
    if net.horizon > fbi.MAX_HORIZON:
        return schedule
    search = _Search(net)
    first = [s for _, s in schedule]
    seed = sorted(range(net.n), key=lambda i: (first[i], search.rank[i]))
    pop = [search.evaluate(seed)]
    best = pop[0]

    def done() -> bool:
        return best.makespan <= target or search.made >= max_schedules or stop()

    while len(pop) < population and not done():
        ind = search.evaluate(fbi._sample(net, rng))
        pop.append(ind)
        if ind.makespan < best.makespan:
            best = ind
    while not done():
        children: list[_Individual] = []
        for _ in range(population // 2):
            if done():
                break
            a, b = (_tournament(pop, rng) for _ in range(2))
            for mother, father in ((a, b), (b, a)):
                child = search.crossover(mother.order, father.order, rng)
                search.mutate(child, rng)
                ind = search.evaluate(child)
                children.append(ind)
                if ind.makespan < best.makespan:
                    best = ind
        pool = pop + children
        pool.sort(key=lambda x: x.makespan)
        pop = _distinct(pool, population)
    out = tuple(zip(modes, best.start, strict=True))
    if violations(problem, out) or schedule_makespan(problem, out) > schedule_makespan(
        problem, schedule
    ):
        return schedule
    return out


def _tournament(pop: Sequence[_Individual], rng: _Rng) -> _Individual:
    a = pop[rng.randrange(len(pop))]
    b = pop[rng.randrange(len(pop))]
    return a if a.makespan <= b.makespan else b


def _distinct(pool: Sequence[_Individual], size: int) -> list[_Individual]:
    """The best `size` of a sorted pool, dropping exact duplicate schedules (diversity)."""
    out: list[_Individual] = []
    seen: set[tuple[int, ...]] = set()
    for ind in pool:
        key = tuple(ind.start)
        if key in seen:
            continue
        seen.add(key)
        out.append(ind)
        if len(out) >= size:
            break
    return out
