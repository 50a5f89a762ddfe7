"""Forward-backward improvement: never worse than the schedule it starts from, always valid, and
the lower bound it stops at is a true lower bound."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from maestro import fbi
from maestro.problem import Edge, Mode, Problem, Resource, Task, schedule_makespan, violations
from maestro.sgs import serial_sgs


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    n = draw(st.integers(2, 12))
    caps = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    tasks = tuple(
        Task(
            id=str(i),
            modes=tuple(
                Mode(
                    id=str(k),
                    duration=draw(st.integers(0, 7)),
                    demands=tuple(draw(st.integers(0, c)) for c in caps),
                )
                for k in range(draw(st.integers(1, 2)))
            ),
        )
        for i in range(n)
    )
    edges = tuple(
        Edge(i, j, draw(st.integers(0, 2)))
        for j in range(n)
        for i in range(j)
        if i + 4 > j and draw(st.booleans())
    )
    resources = tuple(Resource(f"R{k}", c) for k, c in enumerate(caps))
    return Problem("random", tasks, edges, resources, objective="makespan", unit="period")


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(0, 3))
def test_improvement_is_valid_never_worse_and_above_the_lower_bound(
    problem: Problem, seed: int
) -> None:
    first = serial_sgs(problem)
    assert first is not None
    better = fbi.improve(
        problem, first, random.Random(seed), max_schedules=60, stop=lambda: False
    )
    assert violations(problem, better) == []
    assert [m for m, _ in better] == [m for m, _ in first]  # modes kept
    assert schedule_makespan(problem, better) <= schedule_makespan(problem, first)
    assert fbi.lower_bound(problem) <= schedule_makespan(problem, better)


def test_justification_shortens_a_left_shifted_schedule() -> None:
    """a (3, on the resource), b (1, off it) before c (3, on it): the list a, b, c placed one
    after another ends at 7; one backward-forward pass starts b at 0 and ends at the optimum 6."""
    r = Resource("R", 1)
    tasks = (
        Task("a", (Mode("1", 3, (1,)),)),
        Task("b", (Mode("1", 1, (0,)),)),
        Task("c", (Mode("1", 3, (1,)),)),
    )
    problem = Problem("t", tasks, (Edge(1, 2),), (r,), objective="makespan", unit="period")
    forced = ((0, 0), (0, 3), (0, 4))  # a, then b, then c: 7
    assert violations(problem, forced) == []
    better = fbi.improve(problem, forced, random.Random(0), max_schedules=3, stop=lambda: True)
    assert schedule_makespan(problem, better) == 6
    assert fbi.lower_bound(problem) == 6


def test_pins_and_start_to_start_lags_are_left_alone() -> None:
    r = Resource("R", 1)
    tasks = (Task("a", (Mode("1", 2, (1,)),)), Task("b", (Mode("1", 2, (1,)),)))
    lagged = Problem("t", tasks, (Edge(0, 1, 1, start_to_start=True),), (r,),
                     objective="makespan", unit="period")
    assert not fbi.applies(lagged)
    schedule = ((0, 0), (0, 2))
    assert fbi.improve(lagged, schedule, random.Random(0), max_schedules=9,
                       stop=lambda: False) == schedule
    assert fbi.lower_bound(lagged) == 0
