"""Plan quality and solve time on PSPLIB sets against the published optima and bounds.

    python benchmarks/psplib.py ../shared/benchmarks/psplib/j30 --time-limit 1 [--limit N]
        [--stride K] [--workers W] [--seed S] [--deterministic]

--stride K keeps every K-th instance (a sample across all parameter groups, unlike --limit,
which keeps the first N and so only the first groups).

DIR is a set folder (j30, mm_j10, rcpsp_max_j30, ...) or the psplib root (every set in it).
Each set is solved by CP-SAT (via maestro.solve) and by the serial SGS in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from maestro import psplib
from maestro.problem import schedule_makespan, violations
from maestro.sgs import serial_sgs
from maestro.solve import SolveOptions, solve

SETS = ("j30", "j60", "j120", "mm_j10", "mm_j20", "mm_j30", "rcpsp_max_j30")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _q(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def run_set(folder: Path, opts: SolveOptions, limit: int | None, stride: int = 1) -> None:
    refs = psplib.read_references(folder.parent, folder.name)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".sm", ".mm", ".sch"))
    files = files[::stride]
    files = files[:limit] if limit else files
    rows = []
    t_start = time.perf_counter()
    for path in files:
        ref = refs.get(path.stem)
        problem = psplib.to_problem(psplib.load(path))
        t0 = time.perf_counter()
        sgs = serial_sgs(problem)
        sgs_s = time.perf_counter() - t0
        if sgs is not None and violations(problem, sgs):
            sgs = None  # e.g. a max lag broken: no valid schedule
        sgs_ms = schedule_makespan(problem, sgs) if sgs is not None else None
        plan = solve(problem, opts)
        rows.append((path.stem, ref, plan, sgs_ms, sgs_s))
    wall = time.perf_counter() - t_start

    def gaps(values: list[tuple[int | None, int | None]]) -> tuple[int, list[float]]:
        at, out = 0, []
        for got, best in values:
            if got is None or best is None:
                continue
            at += got <= best
            out.append((got - best) / best)
        return at, out

    with_ref = [r for r in rows if r[1] is not None and r[1].ub is not None]
    cp_at, cp_gaps = gaps([(r[2].makespan, r[1].ub) for r in with_ref])  # type: ignore[union-attr]
    sg_at, sg_gaps = gaps([(r[3], r[1].ub) for r in with_ref])  # type: ignore[union-attr]
    times = [r[2].solve_time_s for r in rows]
    proven = sum(r[2].status == "optimal" for r in rows)
    infeasible = [r for r in rows if r[2].status == "infeasible"]
    wrong_unsat = [r[0] for r in infeasible if r[1] is not None and not r[1].infeasible]
    unsat_known = sum(1 for r in rows if r[1] is not None and r[1].infeasible)
    no_plan = sum(r[2].status == "unknown" for r in rows)
    n_ref = len(with_ref)
    print(f"\n== {folder.name}: {len(rows)} instances, {n_ref} with a published optimum/UB ==")
    print(
        f"CP-SAT ({opts.time_limit_s:g} s, {opts.workers} workers, seed {opts.seed}): "
        f"= best known {cp_at}/{n_ref} ({_pct(cp_at / max(n_ref, 1))}), "
        f"proven optimal {proven}/{len(rows)} ({_pct(proven / max(len(rows), 1))}), "
        f"mean gap {_pct(statistics.fmean(cp_gaps) if cp_gaps else 0)}, "
        f"max gap {_pct(max(cp_gaps, default=0))}"
    )
    print(
        f"  solve s: p50 {_q(times, 0.5):.3f}  p99 {_q(times, 0.99):.3f}  "
        f"max {max(times, default=0):.3f}  mean {statistics.fmean(times) if times else 0:.3f}; "
        f"proven infeasible {len(infeasible)} (published unsat {unsat_known}"
        f"{', contradicts ' + ','.join(wrong_unsat) if wrong_unsat else ''}); "
        f"no plan in time {no_plan}"
    )
    sgs_times = [r[4] for r in rows]
    sgs_fail = sum(r[3] is None for r in rows)
    print(
        f"serial SGS (LFT): = best known {sg_at}/{n_ref} ({_pct(sg_at / max(n_ref, 1))}), "
        f"mean gap {_pct(statistics.fmean(sg_gaps) if sg_gaps else 0)}, "
        f"max gap {_pct(max(sg_gaps, default=0))}, mean {1000 * statistics.fmean(sgs_times):.2f} ms"
        f", no schedule {sgs_fail}"
    )
    off = [(r[0], r[2].makespan, r[1].ub, r[2].status) for r in with_ref  # type: ignore[union-attr]
           if r[2].makespan is not None and r[2].makespan > r[1].ub]  # type: ignore[union-attr]
    if off:
        print("  above best known: " + ", ".join(
            f"{name} {got}/{best} ({status})" for name, got, best, status in off[:20]))
    print(f"  wall for the set: {wall:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--time-limit", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deterministic", action="store_true")
    args = ap.parse_args(argv)
    opts = SolveOptions(
        time_limit_s=args.time_limit,
        workers=args.workers,
        seed=args.seed,
        deterministic=args.deterministic,
    )
    root: Path = args.dir
    if not root.is_dir():
        print(f"no such folder: {root}", file=sys.stderr)
        return 2
    folders = (
        [root / s for s in SETS if (root / s).is_dir()] if (root / "bounds").is_dir() else [root]
    )
    for folder in folders:
        run_set(folder, opts, args.limit, args.stride)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
