"""The genetic algorithm: valid, never worse than its seed, same seed same plan, and on a real
PSPLIB instance better than one justified serial SGS pass."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maestro import fbi, ga, psplib
from maestro.problem import Problem, schedule_makespan, violations
from maestro.sgs import serial_sgs
from tests.maestro.conftest import PSPLIB
from tests.maestro.test_fbi import problems


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(0, 3))
def test_evolved_schedules_are_valid_and_never_worse(problem: Problem, seed: int) -> None:
    first = serial_sgs(problem)
    assert first is not None
    out = ga.evolve(problem, first, random.Random(seed), max_schedules=120, stop=lambda: False)
    assert violations(problem, out) == []
    assert [m for m, _ in out] == [m for m, _ in first]  # modes kept
    assert schedule_makespan(problem, out) <= schedule_makespan(problem, first)
    assert fbi.lower_bound(problem) <= schedule_makespan(problem, out)
    again = ga.evolve(problem, first, random.Random(seed), max_schedules=120, stop=lambda: False)
    assert again == out  # the random source and the budget decide, not the clock


@pytest.mark.skipif(not (PSPLIB / "j120").is_dir(), reason="PSPLIB data not present")
def test_beats_one_justified_pass_on_a_hard_j120_instance() -> None:
    problem = psplib.to_problem(psplib.load(PSPLIB / "j120" / "j12011_3.sm"))
    first = serial_sgs(problem)
    assert first is not None
    justified = fbi.improve(problem, first, random.Random(0), max_schedules=3,
                            stop=lambda: False)
    out = ga.evolve(problem, first, random.Random(0), max_schedules=600, stop=lambda: False)
    assert violations(problem, out) == []
    assert schedule_makespan(problem, out) < schedule_makespan(problem, justified)
