"""Every plan is valid against the instance file itself, checked without the Problem form: one mode
per job, its duration, every precedence (and RCPSP/max lag), renewable capacity in every period,
and non-renewable totals. A sample of every PSPLIB set, at a short limit.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from maestro import psplib
from maestro.plan import Plan
from maestro.solve import SolveOptions, solve

OPTS = SolveOptions(time_limit_s=0.5, seed=0)
# RCPSP/max's time lags make even a first feasible plan a search: on a busy machine 0.5 s of
# wall time may not reach one, and the test is about validity, not speed.
LIMIT_S = {"rcpsp_max_j30": 3.0}
# (set, stride over the sorted files): about 4 instances per set spread across the groups
SAMPLES = {
    "j30": 120,
    "j60": 120,
    "j120": 150,
    "mm_j10": 134,
    "mm_j20": 139,
    "rcpsp_max_j30": 54,
}


def _find_psplib() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "benchmarks" / "psplib"
        if candidate.is_dir():
            return candidate
    return None


def check(instance: psplib.Instance, plan: Plan) -> list[str]:
    """What the plan breaks in the instance (empty when valid)."""
    broken: list[str] = []
    jobs = {str(j.number): j for j in instance.jobs}
    chosen: dict[int, tuple[int, int, psplib.JobMode]] = {}
    for a in plan.assignments:
        job = jobs.get(a.step)
        if job is None or job.number in chosen:
            broken.append(f"job {a.step}: unknown or planned twice")
            continue
        m = int(a.executor) - 1
        if not 0 <= m < len(job.modes):
            broken.append(f"job {a.step}: no mode {a.executor}")
            continue
        mode = job.modes[m]
        if a.end - a.start != mode.duration or a.start < 0:
            broken.append(f"job {a.step}: runs {a.start}..{a.end}, mode lasts {mode.duration}")
        chosen[job.number] = (a.start, a.end, mode)
    if len(chosen) != len(jobs):
        broken.append(f"{len(jobs) - len(chosen)} jobs without a mode")
        return broken
    for j in instance.jobs:
        for k, s in enumerate(j.successors):
            if instance.start_to_start:
                lag = j.lags[k]
                if chosen[s][0] < chosen[j.number][0] + lag:
                    broken.append(f"lag {j.number}->{s} ({lag}) broken")
            elif chosen[s][0] < chosen[j.number][1]:
                broken.append(f"{s} starts before {j.number} ends")
    top = max((e for _, e, _ in chosen.values()), default=0)
    for t in range(top):
        for r, cap in enumerate(instance.renewable):
            used = sum(m.renewable[r] for s, e, m in chosen.values() if s <= t < e)
            if used > cap:
                broken.append(f"R{r + 1} at {t}: {used} > {cap}")
    for r, cap in enumerate(instance.nonrenewable):
        used = sum(m.nonrenewable[r] for _, _, m in chosen.values())
        if used > cap:
            broken.append(f"N{r + 1}: {used} > {cap}")
    if plan.makespan is not None and plan.makespan != top:
        broken.append(f"makespan {plan.makespan} but the last job ends at {top}")
    return broken


def test_the_checker_catches_an_overlap() -> None:
    """The checker is a defence: two jobs over one unit of capacity at once are refused."""
    inst = psplib.Instance(
        "tiny",
        (
            psplib.Job(1, (psplib.JobMode(0, (0,)),), (2, 3)),
            psplib.Job(2, (psplib.JobMode(2, (1,)),), (4,)),
            psplib.Job(3, (psplib.JobMode(2, (1,)),), (4,)),
            psplib.Job(4, (psplib.JobMode(0, (0,)),), ()),
        ),
        (1,),
    )
    good = solve(psplib.to_problem(inst), OPTS)
    assert check(inst, good) == []
    assert good.makespan == 4
    a = good.assignments
    bad = Plan(
        status="feasible",
        assignments=(a[0], a[1], type(a[2])(a[2].step, a[2].executor, a[1].start, a[1].end), a[3]),
    )
    assert any("R1" in b for b in check(inst, bad))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_plans_are_valid_for_a_sample_of_every_set(name: str) -> None:
    root = _find_psplib()
    if root is None:
        pytest.skip("PSPLIB data not found next to the repository")
    refs = psplib.read_references(root, name)
    files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in (".sm", ".mm", ".sch"))
    for path in files[:: SAMPLES[name]]:
        instance = psplib.load(path)
        options = msgspec.structs.replace(OPTS, time_limit_s=LIMIT_S.get(name, 0.5))
        plan = solve(psplib.to_problem(instance), options)
        ref = refs.get(path.stem)
        if plan.status == "infeasible":
            assert ref is not None
            assert ref.infeasible, f"{path.stem}: claimed infeasible"
            continue
        if ref is not None and ref.infeasible:
            assert plan.status == "unknown", path.stem
            continue
        assert plan.status in ("optimal", "feasible"), path.stem
        assert check(instance, plan) == [], path.stem
        if ref is not None and ref.lb is not None and plan.makespan is not None:
            assert plan.makespan >= ref.lb, f"{path.stem}: below the published lower bound"
        if plan.status == "optimal" and ref is not None and ref.ub is not None:
            assert plan.makespan == ref.ub or ref.optimum is None, path.stem
