"""The answer MAESTRO journals: a Plan value with status, quality bound and one assignment per step.

Shared by the SGS, CP-SAT, Gantt and policy modules so none of them depends on another's internals.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from maestro.problem import (
    Problem,
    Schedule,
    Unit,
    schedule_cost,
    schedule_makespan,
    schedule_tokens,
)

__all__ = ["Assignment", "Plan", "Source", "Status", "plan_from_schedule", "primary_value"]

Status = Literal["optimal", "feasible", "infeasible", "unknown"]
Source = Literal["sgs", "cp-sat", "none"]


class Assignment(msgspec.Struct, frozen=True):
    """Step `step` runs on `executor` (or PSPLIB mode) from `start` to `end`, in the plan's unit."""

    step: str
    executor: str
    start: int
    end: int


class Plan(msgspec.Struct, frozen=True):
    """A schedule and how good it is.

    `objective`/`bound`/`gap` are on the primary criterion: makespan for "makespan", cost for
    "cost" and "lexicographic" (where makespan only breaks ties). No assignments unless the
    status is optimal or feasible.
    """

    status: Status
    assignments: tuple[Assignment, ...] = ()
    makespan: int | None = None
    cost: int | None = None
    tokens: int | None = None
    objective: int | None = None
    bound: int | None = None
    gap: float | None = None
    solve_time_s: float = 0.0
    source: Source = "none"
    unit: Unit = "ms"


def primary_value(problem: Problem, schedule: Schedule) -> int:
    """The primary criterion of `problem.objective` for a schedule."""
    if problem.objective == "makespan":
        return schedule_makespan(problem, schedule)
    return schedule_cost(problem, schedule)


def plan_from_schedule(
    problem: Problem,
    schedule: Schedule,
    status: Status,
    *,
    bound: int | None = None,
    solve_time_s: float = 0.0,
    source: Source = "none",
) -> Plan:
    assignments = tuple(
        Assignment(
            step=t.id,
            executor=t.modes[m].id,
            start=s,
            end=t.end if t.end is not None else s + t.modes[m].duration,
        )
        for t, (m, s) in zip(problem.tasks, schedule, strict=True)
    )
    value = primary_value(problem, schedule)
    gap = (
        None if bound is None else (0.0 if value == bound else (value - bound) / max(abs(value), 1))
    )
    return Plan(
        status=status,
        assignments=assignments,
        makespan=schedule_makespan(problem, schedule),
        cost=schedule_cost(problem, schedule),
        tokens=schedule_tokens(problem, schedule),
        objective=value,
        bound=bound,
        gap=gap,
        solve_time_s=solve_time_s,
        source=source,
        unit=problem.unit,
    )
