"""Plan quality against published PSPLIB optima (data read from ../shared, never copied)."""

from __future__ import annotations

from pathlib import Path

from maestro import psplib
from maestro.problem import violations
from maestro.solve import SolveOptions, solve

# 8 s of wall time at most (deterministic mode); these prove optimality in < 1.2 s.
OPTS = SolveOptions(time_limit_s=8.0, workers=2, seed=0)


def j30_subset(root: Path) -> list[Path]:
    """A fixed spread of 20 j30 instances: every 24th of the 480 sorted file names."""
    return sorted((root / "j30").glob("*.sm"))[::24]


def test_sm_parser_reads_jobs_modes_and_capacities(psplib_dir: Path) -> None:
    """j301_1: 32 jobs including dummies, four resources (12, 13, 4, 12)."""
    inst = psplib.load(psplib_dir / "j30" / "j301_1.sm")
    assert len(inst.jobs) == 32
    assert inst.renewable == (12, 13, 4, 12)
    assert inst.jobs[1].successors == (6, 11, 15)
    assert inst.jobs[1].modes[0].duration == 8


def test_mm_parser_reads_continuation_lines_and_nonrenewables(psplib_dir: Path) -> None:
    """j1010_1.mm: three modes per job, two renewable and two non-renewable resources."""
    inst = psplib.load(psplib_dir / "mm_j10" / "j1010_1.mm")
    assert inst.renewable == (11, 9)
    assert inst.nonrenewable == (42, 17)
    assert [m.duration for m in inst.jobs[1].modes] == [1, 4, 6]
    assert inst.jobs[1].modes[0].nonrenewable == (7, 0)


def test_sch_parser_reads_signed_lags(psplib_dir: Path) -> None:
    """PSP1.SCH: job 3 has successors 30, 23, 31 with lags -1, 5, 9."""
    inst = psplib.load(psplib_dir / "rcpsp_max_j30" / "PSP1.SCH")
    assert inst.jobs[3].successors == (30, 23, 31)
    assert inst.jobs[3].lags == (-1, 5, 9)
    assert inst.renewable == (5, 5, 5, 5, 5)


def test_reference_tables_load(psplib_dir: Path) -> None:
    """Optima, bounds and the RCPSP/max table with its unsat and range entries."""
    assert psplib.read_references(psplib_dir, "j30")["j301_1"].optimum == 43
    assert len(psplib.read_references(psplib_dir, "j60")) == 480
    rmax = psplib.read_references(psplib_dir, "rcpsp_max_j30")
    assert rmax["PSP1"].infeasible
    assert rmax["PSP4"].optimum is None
    assert rmax["PSP9"].optimum == 117


def test_twenty_j30_instances_reach_the_published_optimum(psplib_dir: Path) -> None:
    """A spread of 20 j30 instances: CP-SAT's makespan equals the proven optimum."""
    optima = psplib.read_references(psplib_dir, "j30")
    misses = []
    for path in j30_subset(psplib_dir):
        problem = psplib.to_problem(psplib.load(path))
        plan = solve(problem, OPTS)
        if plan.makespan != optima[path.stem].optimum:
            misses.append((path.stem, plan.makespan, optima[path.stem].optimum))
    assert misses == []


def test_multi_mode_j10_instances_reach_the_optimum_within_the_nonrenewable_budget(
    psplib_dir: Path,
) -> None:
    """Executor choice under a budget: two mm_j10 instances at their proven optimum."""
    optima = psplib.read_references(psplib_dir, "mm_j10")
    for name in ("j1010_1", "j1010_5"):
        problem = psplib.to_problem(psplib.load(psplib_dir / "mm_j10" / f"{name}.mm"))
        plan = solve(problem, OPTS)
        assert optima[name].optimum == plan.makespan, name


def test_an_rcpsp_max_instance_with_max_lags_gets_a_feasible_schedule(psplib_dir: Path) -> None:
    """PSP9.SCH (published optimum 117): a schedule that respects every min and max lag."""
    problem = psplib.to_problem(psplib.load(psplib_dir / "rcpsp_max_j30" / "PSP9.SCH"))
    plan = solve(problem, OPTS)
    assert plan.status in ("optimal", "feasible")
    assert plan.makespan is not None
    assert plan.makespan >= 117
    modes = {t.id: {m.id: k for k, m in enumerate(t.modes)} for t in problem.tasks}
    schedule = tuple((modes[a.step][a.executor], a.start) for a in plan.assignments)
    assert violations(problem, schedule) == []


def test_a_proven_infeasible_rcpsp_max_instance_is_infeasible(psplib_dir: Path) -> None:
    """PSP1.SCH is listed unsat: the solver proves it rather than timing out."""
    problem = psplib.to_problem(psplib.load(psplib_dir / "rcpsp_max_j30" / "PSP1.SCH"))
    assert solve(problem, OPTS).status == "infeasible"
