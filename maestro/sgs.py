"""Serial schedule generation (latest-finish-time priority): a feasible first plan in milliseconds.

It is the fallback when CP-SAT finds nothing in time and the hint that gives CP-SAT a solution
from t = 0 (research/planning.md section 3.2).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from maestro.plan import Plan, plan_from_schedule
from maestro.problem import Edge, Mode, Problem, Schedule, Task, horizon, violations

__all__ = ["forward_order", "latest_finish", "serial_sgs", "sgs_plan"]


def forward_order(problem: Problem) -> list[int] | None:
    """Topological order over the edges with lag >= 0 (max lags are checked afterwards)."""
    n = len(problem.tasks)
    indegree = [0] * n
    out: list[list[int]] = [[] for _ in range(n)]
    for e in problem.edges:
        if e.lag >= 0:
            indegree[e.succ] += 1
            out[e.pred].append(e.succ)
    ready = [i for i in range(n) if indegree[i] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop()
        order.append(i)
        for j in out[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    return order if len(order) == n else None


def latest_finish(problem: Problem, order: Sequence[int] | None = None) -> list[int] | None:
    """Latest finish per task with each task's fastest mode, from the deadlines (or horizon).

    None when the lag >= 0 edges have a cycle.
    """
    order = forward_order(problem) if order is None else order
    if order is None:
        return None
    dmin = [
        (t.end - t.start)
        if t.end is not None and t.start is not None
        else min((m.duration for m in t.modes), default=0)
        for t in problem.tasks
    ]
    top = problem.deadline if problem.deadline is not None else horizon(problem)
    lf = [top if t.deadline is None else min(top, t.deadline) for t in problem.tasks]
    preds: list[list[tuple[int, int, bool]]] = [[] for _ in problem.tasks]
    for e in problem.edges:
        if e.lag >= 0:
            preds[e.succ].append((e.pred, e.lag, e.start_to_start))
    for j in reversed(order):
        latest_start = lf[j] - dmin[j]
        for i, lag, ss in preds[j]:
            bound = latest_start - lag + (dmin[i] if ss else 0)
            lf[i] = min(lf[i], bound)
    return lf


# The resource profile is a step function: times ts[k] with usage use[k] until ts[k+1]; the last
# segment runs to infinity and is always empty once every placed task has ended.


def _split(ts: list[int], use: list[list[int]], t: int) -> int:
    k = bisect_right(ts, t) - 1
    if k < 0:
        ts.insert(0, t)
        use.insert(0, [0] * len(use[0]))
        return 0
    if ts[k] == t:
        return k
    ts.insert(k + 1, t)
    use.insert(k + 1, list(use[k]))
    return k + 1


def _add(ts: list[int], use: list[list[int]], start: int, end: int, demands: Sequence[int]) -> None:
    if end <= start or not any(demands):
        return
    a = _split(ts, use, start)
    b = _split(ts, use, end)
    for k in range(a, b):
        row = use[k]
        for r, d in enumerate(demands):
            row[r] += d


def _earliest(
    ts: list[int], use: list[list[int]], caps: Sequence[int], t: int, mode: Mode
) -> int | None:
    nz = [r for r, d in enumerate(mode.demands) if d > 0]
    if any(mode.demands[r] > caps[r] for r in nz):
        return None
    if mode.duration == 0 or not nz:
        return t
    while True:
        k = max(bisect_right(ts, t) - 1, 0)
        clash = None
        while k < len(ts) and ts[k] < t + mode.duration:
            row = use[k]
            if any(row[r] + mode.demands[r] > caps[r] for r in nz):
                clash = k
                break
            k += 1
        if clash is None:
            return t
        t = ts[clash + 1]


def _usage(problem: Problem, m: Mode) -> list[int]:
    """What a mode consumes of each limit SGS keeps: PSPLIB non-renewables, cost, tokens."""
    return [*(m.consumes or [0] * len(problem.nonrenewables)), m.cost, m.tokens]


def _limits(problem: Problem) -> list[int]:
    """The limits of `_usage`, -1 for none."""
    return [
        *(r.capacity for r in problem.nonrenewables),
        problem.budget_cost if problem.budget_cost is not None else -1,
        problem.budget_tokens if problem.budget_tokens is not None else -1,
    ]


def _pick(
    problem: Problem,
    task: Task,
    *,
    est: int,
    latest: int,
    room: Sequence[int],
    profile: tuple[list[int], list[list[int]], Sequence[int]],
) -> tuple[int, int] | None:
    """(mode, start) for one task: earliest finish for makespan, else cheapest on time."""
    ts, use, caps = profile
    best: tuple[tuple[int, ...], int, int] | None = None
    for m, mode in enumerate(task.modes):
        u = _usage(problem, mode)
        if any(r >= 0 and u[k] > r for k, r in enumerate(room)):
            continue
        start = _earliest(ts, use, caps, est, mode)
        if start is None:
            continue
        finish = start + mode.duration
        late = 0 if finish <= latest else 1
        key = (
            (finish, mode.cost, m)
            if problem.objective == "makespan"
            else (late, finish if late else mode.cost, finish, m)
        )
        if best is None or key < best[0]:
            best = (key, m, start)
    return None if best is None else (best[1], best[2])


def serial_sgs(problem: Problem) -> Schedule | None:
    """One pass of the serial SGS: LFT priority, each task at its earliest feasible time.

    Mode choice: earliest finish for makespan goals; otherwise the cheapest mode that still
    finishes by the task's latest finish (else the earliest finish). Non-renewable limits keep
    room for the cheapest modes of the tasks left. None when some task cannot be placed (no mode,
    demand above capacity, a limit, a cycle of min lags). Deadlines and max lags are not
    guaranteed: check with `violations`.
    """
    tasks = problem.tasks
    n = len(tasks)
    order = forward_order(problem)
    lf = latest_finish(problem, order)
    if order is None or lf is None or any(not t.modes for t in tasks):
        return None
    caps = [r.capacity for r in problem.resources]
    profile: tuple[list[int], list[list[int]], Sequence[int]] = ([0], [[0] * len(caps)], caps)
    limits = _limits(problem)
    cheapest = [
        [min(_usage(problem, m)[k] for m in t.modes) for k in range(len(limits))] for t in tasks
    ]
    # room[k]: what is left of limit k after reserving the cheapest mode of every unplaced task
    room = [lim - sum(c[k] for c in cheapest) if lim >= 0 else -1 for k, lim in enumerate(limits)]
    placed: list[tuple[int, int] | None] = [None] * n
    ends = [0] * n

    def place(i: int, m: int, start: int) -> None:
        mode = tasks[i].modes[m]
        placed[i] = (m, start)
        fixed_end = tasks[i].end
        ends[i] = fixed_end if fixed_end is not None else start + mode.duration
        _add(profile[0], profile[1], start, ends[i], mode.demands)
        u = _usage(problem, mode)
        for k in range(len(room)):
            if room[k] >= 0:
                room[k] -= u[k] - cheapest[i][k]

    for i, t in enumerate(tasks):
        if t.start is not None:
            place(i, 0, t.start)
    preds: list[list[Edge]] = [[] for _ in range(n)]
    for e in problem.edges:
        if e.lag >= 0:
            preds[e.succ].append(e)
    rank = {i: r for r, i in enumerate(order)}
    while True:
        eligible = [
            i
            for i in range(n)
            if placed[i] is None and all(placed[e.pred] is not None for e in preds[i])
        ]
        if not eligible:
            break
        i = min(eligible, key=lambda j: (lf[j], rank[j]))
        est = tasks[i].release
        for e in preds[i]:
            p = placed[e.pred]
            assert p is not None
            est = max(est, (p[1] if e.start_to_start else ends[e.pred]) + e.lag)
        own = [r + c if r >= 0 else -1 for r, c in zip(room, cheapest[i], strict=True)]
        choice = _pick(problem, tasks[i], est=est, latest=lf[i], room=own, profile=profile)
        if choice is None:
            return None
        place(i, *choice)
    if any(p is None for p in placed):
        return None
    return tuple(p for p in placed if p is not None)


def sgs_plan(problem: Problem) -> Plan:
    """The SGS schedule as a Plan: "feasible" when it breaks nothing, else "unknown"."""
    schedule = serial_sgs(problem)
    if schedule is None or violations(problem, schedule):
        return Plan(status="unknown", source="sgs", unit=problem.unit)
    return plan_from_schedule(problem, schedule, "feasible", source="sgs")
