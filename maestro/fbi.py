"""Forward-backward improvement (justification) of serial SGS schedules, with biased sampling.

A better first plan than one LFT pass: each sampled activity list is scheduled forward, then
right-justified (scheduled backward, latest finish first) and left-justified again, which never
lengthens the schedule and usually shortens it (Valls, Ballestin & Quintanilla 2005; Tormos &
Lova 2001). The best schedule found is CP-SAT's hint and upper bound.

Pure: the random source and the stop test are passed in by the shell (solve.py), so the same
seed and schedule budget give the same plan. Scope: problems whose edges are all
finish-to-start with lags >= 0, with no pinned, done or released tasks; modes stay as the
starting schedule chose them (so non-renewable limits, cost and tokens are unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from maestro.problem import Problem, Schedule, schedule_makespan, violations

__all__ = ["Rng", "applies", "improve", "lower_bound"]


# Longest horizon (sum of durations and lags) the time-indexed resource profile is kept for.
MAX_HORIZON = 20_000


class Rng(Protocol):
    def random(self) -> float: ...


def applies(problem: Problem) -> bool:
    """Whether `improve` can shift this problem's tasks backward and forward freely."""
    return all(not e.start_to_start and e.lag >= 0 for e in problem.edges) and all(
        t.start is None and t.end is None and t.release == 0 for t in problem.tasks
    )


def lower_bound(problem: Problem) -> int:
    """max(critical path with each task's fastest mode, per-resource energy / capacity).

    Valid for makespan; 0 when the problem is outside `applies` (pins and lags make it moot).
    """
    if not applies(problem):
        return 0
    n = len(problem.tasks)
    dmin = [min((m.duration for m in t.modes), default=0) for t in problem.tasks]
    preds: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for e in problem.edges:
        preds[e.succ].append((e.pred, e.lag))
    order = _topological(n, preds)
    if order is None:
        return 0
    finish = [0] * n
    for j in order:
        finish[j] = max((finish[p] + lag for p, lag in preds[j]), default=0) + dmin[j]
    best = max(finish, default=0)
    for r, res in enumerate(problem.resources):
        if res.capacity <= 0:
            continue
        energy = sum(
            min((m.duration * (m.demands[r] if m.demands else 0) for m in t.modes), default=0)
            for t in problem.tasks
        )
        best = max(best, -(-energy // res.capacity))
    return best


def _topological(n: int, preds: Sequence[Sequence[tuple[int, int]]]) -> list[int] | None:
    indegree = [len(p) for p in preds]
    succs: list[list[int]] = [[] for _ in range(n)]
    for j, ps in enumerate(preds):
        for p, _ in ps:
            succs[p].append(j)
    ready = [i for i in range(n) if indegree[i] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop()
        order.append(i)
        for j in succs[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    return order if len(order) == n else None


class _Net:
    """The problem with modes fixed, as flat lists for the inner loops."""

    __slots__ = ("caps", "dem", "dur", "horizon", "lft", "n", "preds", "succs")

    def __init__(self, problem: Problem, modes: Sequence[int]) -> None:
        self.n = len(problem.tasks)
        self.caps = [r.capacity for r in problem.resources]
        self.dur = [t.modes[m].duration for t, m in zip(problem.tasks, modes, strict=True)]
        self.dem = [
            [(r, q) for r, q in enumerate(t.modes[m].demands) if q > 0]
            for t, m in zip(problem.tasks, modes, strict=True)
        ]
        self.preds: list[list[tuple[int, int]]] = [[] for _ in range(self.n)]
        self.succs: list[list[tuple[int, int]]] = [[] for _ in range(self.n)]
        for e in problem.edges:
            self.preds[e.succ].append((e.pred, e.lag))
            self.succs[e.pred].append((e.succ, e.lag))
        self.horizon = sum(self.dur) + sum(e.lag for e in problem.edges) + 1
        # latest finish on the horizon (precedence only): the sampling priority
        lft = [self.horizon] * self.n
        order = _topological(self.n, self.preds) or list(range(self.n))
        for j in reversed(order):
            for p, lag in self.preds[j]:
                lft[p] = min(lft[p], lft[j] - self.dur[j] - lag)
        self.lft = lft


def _sgs(net: _Net, order: Sequence[int], preds: Sequence[Sequence[tuple[int, int]]]) -> list[int]:
    """Serial SGS on an activity list: each task, in list order, at its earliest feasible start.

    `preds` is the network's or the reversed one's (for the backward pass).
    """
    dur, dem, caps = net.dur, net.dem, net.caps
    usage = [[0] * net.horizon for _ in caps]
    start = [0] * net.n
    for j in order:
        t = 0
        for p, lag in preds[j]:
            t = max(t, start[p] + dur[p] + lag)
        d = dur[j]
        need = dem[j]
        if d and need:
            # max() over a slice runs in C: ~25 % faster than testing period by period
            moved = True
            while moved:
                moved = False
                for r, q in need:
                    row = usage[r]
                    lim = caps[r] - q
                    if max(row[t : t + d]) > lim:
                        k = t + d - 1
                        while row[k] <= lim:
                            k -= 1
                        t = k + 1
                        moved = True
                        break
            for r, q in need:
                row = usage[r]
                row[t : t + d] = [x + q for x in row[t : t + d]]
        start[j] = t
    return start


def _makespan(net: _Net, start: Sequence[int]) -> int:
    return max((s + d for s, d in zip(start, net.dur, strict=True)), default=0)


def _justify(net: _Net, start: list[int]) -> list[int]:
    """Backward then forward pass until the makespan stops improving."""
    best = _makespan(net, start)
    while True:
        finish = [s + d for s, d in zip(start, net.dur, strict=True)]
        back_order = sorted(range(net.n), key=lambda i: (-finish[i], -start[i]))
        rs = _sgs(net, back_order, net.succs)
        top = _makespan(net, rs)
        latest = [top - rs[i] - net.dur[i] for i in range(net.n)]
        fwd_order = sorted(range(net.n), key=lambda i: (latest[i], latest[i] + net.dur[i]))
        nxt = _sgs(net, fwd_order, net.preds)
        value = _makespan(net, nxt)
        if value >= best:
            return start if value > best else nxt
        start, best = nxt, value


def _sample(net: _Net, rng: Rng) -> list[int]:
    """An activity list by regret-biased random sampling on latest finish (Kolisch 1996)."""
    indegree = [len(p) for p in net.preds]
    eligible = [i for i in range(net.n) if indegree[i] == 0]
    order: list[int] = []
    lft = net.lft
    while eligible:
        worst = max(lft[i] for i in eligible)
        weights = [(worst - lft[i] + 1) ** 2 for i in eligible]
        x = rng.random() * sum(weights)
        k = 0
        while k < len(weights) - 1 and x >= weights[k]:
            x -= weights[k]
            k += 1
        i = eligible.pop(k)
        order.append(i)
        for j, _ in net.succs[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                eligible.append(j)
    return order


def improve(
    problem: Problem,
    schedule: Schedule,
    rng: Rng,
    *,
    max_schedules: int,
    stop: Callable[[], bool],
    target: int = 0,
    stall: int = 1 << 30,
) -> Schedule:
    """The best of `schedule` justified and up to `max_schedules` sampled-and-justified lists.

    Stops early when `stop()` says so, the makespan reaches `target` (a lower bound) or `stall`
    samples in a row found nothing better. The
    result keeps `schedule`'s modes and never has a larger makespan; a schedule that breaks a
    deadline is never returned in place of a valid one.
    """
    if not applies(problem) or not problem.tasks:
        return schedule
    modes = [m for m, _ in schedule]
    net = _Net(problem, modes)
    if net.horizon > MAX_HORIZON:
        return schedule  # the profile is time-indexed: fine in periods, not in milliseconds
    first = [s for _, s in schedule]
    best = _justify(net, first)
    best_value = _makespan(net, best)
    made = 3
    stale = 0
    while made < max_schedules and best_value > target and stale < stall and not stop():
        cand = _justify(net, _sgs(net, _sample(net, rng), net.preds))
        made += 3
        stale += 1
        value = _makespan(net, cand)
        if value < best_value:
            best, best_value, stale = cand, value, 0
    out = tuple(zip(modes, best, strict=True))
    if violations(problem, out) or schedule_makespan(problem, out) > schedule_makespan(
        problem, schedule
    ):
        return schedule
    return out
