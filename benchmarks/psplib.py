"""Plan quality and wall time on PSPLIB sets against the published optima and bounds, next to the
serial SGS and a second CP-based scheduler (pyjobshop on OR-Tools) in the same run.

    python benchmarks/psplib.py ../shared/benchmarks/psplib/j30 --time-limit 8 [--limit N]
        [--stride K] [--workers W] [--seed S] [--deterministic] [--peer pyjobshop|none]
        [--csv rows.csv]

--stride K keeps every K-th instance of the sorted names; each parameter group's files are
contiguous in that order, so --stride 10 on j120 is one instance of each of its 60 groups.
Times are wall time around the whole call (reading excluded, model building included): the
promise under test is "returns within the limit + 0.3 s". Each set says whether the GA ran on
numba-compiled kernels (maestro/jit.py) by its end. The 1-minute load average is printed for each
set, since the machine is shared. The peer is optional: `pip install -e ".[bench]"`.

DIR is a set folder (j30, mm_j10, rcpsp_max_j30, ...) or the psplib root (every set in it).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from maestro import jit, psplib
from maestro.problem import Problem, schedule_makespan, violations
from maestro.sgs import serial_sgs
from maestro.solve import SolveOptions, available_workers, solve

SETS = ("j30", "j60", "j120", "mm_j10", "mm_j20", "mm_j30", "rcpsp_max_j30")


class Run(msgspec.Struct, frozen=True):
    """One solver's answer on one instance: makespan (None: no plan), proven, infeasible, wall."""

    makespan: int | None
    proven: bool
    infeasible: bool
    wall_s: float


Peer = Callable[[Path, float, int], Run]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _q(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def _pyjobshop() -> Peer | None:
    try:
        import pyjobshop  # noqa: PLC0415
    except ImportError:
        return None

    def run(path: Path, limit: float, workers: int) -> Run:
        fmt = "rcpsp_max" if path.suffix.lower() == ".sch" else "psplib"
        data = pyjobshop.read(path, instance_format=fmt)
        t0 = time.monotonic()
        res = pyjobshop.solve(data, "ortools", time_limit=limit, num_workers=workers)
        wall = time.monotonic() - t0
        status = res.status.value
        found = res.objective != float("inf") and status in ("Optimal", "Feasible", "Time-limit")
        return Run(int(res.objective) if found else None, status == "Optimal",
                   status == "Infeasible", wall)

    return run


def _ours(problem: Problem, opts: SolveOptions) -> Run:
    t0 = time.monotonic()
    plan = solve(problem, opts)
    wall = time.monotonic() - t0
    return Run(plan.makespan, plan.status == "optimal", plan.status == "infeasible", wall)


def _summary(label: str, runs: list[Run], refs: list[psplib.Reference | None]) -> str:
    at, gaps, proven, wrong = 0, [], 0, 0
    for run, ref in zip(runs, refs, strict=True):
        proven += run.proven
        if ref is not None and ref.infeasible:
            continue
        if run.infeasible:
            wrong += ref is not None and not ref.infeasible
            continue
        if ref is None or ref.ub is None or run.makespan is None:
            continue
        at += run.makespan <= ref.ub
        gaps.append((run.makespan - ref.ub) / ref.ub)
    n_ref = sum(1 for r in refs if r is not None and r.ub is not None and not r.infeasible)
    walls = [r.wall_s for r in runs]
    unsat = sum(r.infeasible for r in runs)
    none = sum(r.makespan is None and not r.infeasible for r in runs)
    return (
        f"{label:<22} at best known {at}/{n_ref} ({_pct(at / max(n_ref, 1))}), proven {proven}, "
        f"gap mean {_pct(statistics.fmean(gaps) if gaps else 0)} max {_pct(max(gaps, default=0))}"
        f" | wall p50 {_q(walls, 0.5):.3f} p99 {_q(walls, 0.99):.3f}"
        f" max {max(walls, default=0):.3f} s | infeasible {unsat}"
        f"{f' (WRONG {wrong})' if wrong else ''}, no plan {none}"
    )


def run_set(
    folder: Path,
    opts: SolveOptions,
    *,
    limit: int | None,
    stride: int,
    peer: Peer | None,
    rows_out: csv.DictWriter[str] | None,
) -> None:
    refs = psplib.read_references(folder.parent, folder.name)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".sm", ".mm", ".sch"))
    files = files[::stride]
    files = files[:limit] if limit else files
    workers = opts.workers or available_workers()
    load_start = os.getloadavg()[0]
    loads: list[float] = []
    ours: list[Run] = []
    sgs: list[Run] = []
    theirs: list[Run] = []
    broken: list[str] = []
    t_start = time.monotonic()
    for path in files:
        problem = psplib.to_problem(psplib.load(path))
        t0 = time.monotonic()
        first = serial_sgs(problem)
        valid = first is not None and not violations(problem, first)
        sgs.append(Run(schedule_makespan(problem, first) if valid and first else None, False,
                       False, time.monotonic() - t0))
        ours.append(_ours(problem, opts))
        if peer is not None:
            theirs.append(peer(path, opts.time_limit_s, workers))
        loads.append(os.getloadavg()[0])
        ref = refs.get(path.stem)
        if ref is not None and ref.lb is not None and ours[-1].makespan is not None \
                and ours[-1].makespan < ref.lb and not folder.name.startswith("rcpsp_max"):
            broken.append(path.stem)
        if rows_out is not None:
            rows_out.writerow({
                "set": folder.name, "instance": path.stem,
                "best_ub": ref.ub if ref else "", "best_lb": ref.lb if ref else "",
                "ours": ours[-1].makespan, "ours_proven": ours[-1].proven,
                "ours_wall": f"{ours[-1].wall_s:.3f}", "sgs": sgs[-1].makespan,
                "peer": theirs[-1].makespan if theirs else "",
                "peer_wall": f"{theirs[-1].wall_s:.3f}" if theirs else "",
                "load1": f"{loads[-1]:.2f}",
            })
    wall = time.monotonic() - t_start
    ref_list = [refs.get(p.stem) for p in files]
    print(f"\n== {folder.name}: {len(files)} instances (stride {stride}), limit "
          f"{opts.time_limit_s:g} s, {workers} workers, seed {opts.seed}"
          f"{', deterministic' if opts.deterministic else ''}; load1 {load_start:.2f} at start, "
          f"mean {statistics.fmean(loads) if loads else 0:.2f}, max {max(loads, default=0):.2f} ==")
    fails = jit.failure()
    print(f"  GA kernels: {'compiled (numba)' if jit.compiled() else 'Python: ' + str(fails)}")
    print(_summary("maestro", ours, ref_list))
    print(_summary("serial SGS (LFT)", sgs, ref_list))
    if peer is not None:
        print(_summary("pyjobshop (OR-Tools)", theirs, ref_list))
    over = [p.stem for p, r in zip(files, ours, strict=True)
            if r.wall_s > opts.time_limit_s + 0.3]
    if over:
        print(f"  over the limit + 0.3 s: {', '.join(over)}")
    if broken:
        print(f"  BELOW THE PUBLISHED LOWER BOUND: {', '.join(broken)}")
    print(f"  wall for the set: {wall:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--time-limit", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--workers", type=int, default=None, help="default: the affinity mask")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deterministic", action="store_true")
    ap.add_argument("--peer", choices=("pyjobshop", "none"), default="pyjobshop")
    ap.add_argument("--csv", type=Path, default=None, help="one row per instance")
    args = ap.parse_args(argv)
    opts = SolveOptions(
        time_limit_s=args.time_limit,
        workers=args.workers,
        seed=args.seed,
        deterministic=args.deterministic,
    )
    jit.start()  # as a service does at its first plan; reading the sets overlaps the compile
    root: Path = args.dir
    if not root.is_dir():
        print(f"no such folder: {root}", file=sys.stderr)
        return 2
    peer = _pyjobshop() if args.peer == "pyjobshop" else None
    if args.peer == "pyjobshop" and peer is None:
        print("pyjobshop is not installed (pip install -e '.[bench]'): no peer column",
              file=sys.stderr)
    folders = (
        [root / s for s in SETS if (root / s).is_dir()] if (root / "bounds").is_dir() else [root]
    )
    out = args.csv.open("a", newline="") if args.csv else None
    fields = ["set", "instance", "best_ub", "best_lb", "ours", "ours_proven", "ours_wall", "sgs",
              "peer", "peer_wall", "load1"]
    writer = csv.DictWriter(out, fieldnames=fields) if out else None
    if writer is not None and out is not None and out.tell() == 0:
        writer.writeheader()
    try:
        for folder in folders:
            run_set(folder, opts, limit=args.limit, stride=args.stride, peer=peer,
                    rows_out=writer)
            if out is not None:
                out.flush()
    finally:
        if out is not None:
            out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
