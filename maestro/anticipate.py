"""Failure anticipation for a plan: backups, retry slack, on-time probability, compensations.

Pure: randomness comes in as a seeded `random.Random`, so the same plan and seed give the same
estimate and the number can be journaled next to the plan.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from maestro.plan import Plan
from maestro.problem import Mode, Problem


class Rng(Protocol):
    """What the Monte Carlo needs of a seeded `random.Random`: the core never draws a seed."""

    def random(self) -> float: ...


__all__ = ["Anticipation", "Backup", "Compensation", "Rng", "Slack", "anticipate"]


class Backup(msgspec.Struct, frozen=True):
    """Who takes over `step` if its executor fails: the next best eligible executor."""

    step: str
    executor: str
    duration: int
    cost: int


class Slack(msgspec.Struct, frozen=True):
    """Time to keep free after `step` for one retry, because its executor is unreliable."""

    step: str
    slack: int
    reliability: float


class Compensation(msgspec.Struct, frozen=True):
    """The undo action provisioned for a step, in the order MOON would run them."""

    step: str
    action: str


class Anticipation(msgspec.Struct, frozen=True):
    backups: tuple[Backup, ...]
    retry_slack: tuple[Slack, ...]
    compensations: tuple[Compensation, ...]
    p_on_time: float
    p_success: float
    samples: int


def _backup(modes: tuple[Mode, ...], primary: str) -> Mode | None:
    """Most reliable first, then fastest, then cheapest: a backup is for when things go wrong."""
    others = [m for m in modes if m.id != primary]
    return min(others, key=lambda m: (-m.reliability, m.duration, m.cost, m.id), default=None)


def anticipate(
    problem: Problem,
    plan: Plan,
    rng: Rng,
    *,
    samples: int = 2000,
    retry_below: float = 0.95,
) -> Anticipation:
    """Monte Carlo over executor failures: a failed attempt is noticed at its planned end and
    retried once on the backup (or the same executor), pushing dependants later; a second
    failure fails the goal. Capacity effects of the delay are ignored (an optimistic estimate).
    """
    tasks = {t.id: (i, t) for i, t in enumerate(problem.tasks)}
    order = sorted(plan.assignments, key=lambda a: (a.start, a.end, a.step))
    backups: list[Backup] = []
    slack: list[Slack] = []
    risk: list[tuple[int, int, float, int, float, bool]] = []
    for a in order:
        i, t = tasks[a.step]
        mode = next(m for m in t.modes if m.id == a.executor)
        alt = _backup(t.modes, a.executor)
        if alt is not None:
            backups.append(Backup(a.step, alt.id, alt.duration, alt.cost))
        retry = alt if alt is not None else mode
        if mode.reliability < retry_below and t.end is None:
            slack.append(Slack(a.step, retry.duration, mode.reliability))
        fixed = t.end is not None
        risk.append(
            (i, a.end - a.start, mode.reliability, retry.duration, retry.reliability, fixed)
        )
    preds: dict[int, list[tuple[int, int, bool]]] = {}
    for e in problem.edges:
        preds.setdefault(e.succ, []).append((e.pred, e.lag, e.start_to_start))
    planned_start = {tasks[a.step][0]: a.start for a in plan.assignments}
    on_time = ok = 0
    n = len(problem.tasks)
    for _ in range(samples):
        start = [0] * n
        finish = [0] * n
        failed = False
        for i, d, rel, d2, rel2, fixed in risk:
            s = planned_start[i]
            if not fixed:
                for p, lag, ss in preds.get(i, ()):
                    s = max(s, (start[p] if ss else finish[p]) + lag)
            took = d
            if not fixed and rng.random() >= rel:
                took += d2
                failed = failed or rng.random() >= rel2
            start[i], finish[i] = s, s + took
        if failed:
            continue
        ok += 1
        late = problem.deadline is not None and max(finish, default=0) > problem.deadline
        late = late or any(
            t.deadline is not None and finish[i] > t.deadline for i, t in enumerate(problem.tasks)
        )
        on_time += not late
    compensations = tuple(
        Compensation(a.step, comp)
        for a in sorted(order, key=lambda a: (a.end, a.start, a.step), reverse=True)
        if (comp := tasks[a.step][1].compensation) is not None
    )
    return Anticipation(
        backups=tuple(backups),
        retry_slack=tuple(slack),
        compensations=compensations,
        p_on_time=on_time / samples if samples else 0.0,
        p_success=ok / samples if samples else 0.0,
        samples=samples,
    )
