"""PSPLIB readers (.sm, .mm, RCPSP/max .SCH) and their optimum tables, so plan quality is
measured against published optima rather than against our own numbers.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import msgspec

from maestro.problem import Edge, Mode, Problem, Resource, Task

__all__ = [
    "Instance",
    "Job",
    "JobMode",
    "Reference",
    "load",
    "parse_mm",
    "parse_sch",
    "parse_sm",
    "read_references",
    "to_problem",
]


class JobMode(msgspec.Struct, frozen=True):
    duration: int
    renewable: tuple[int, ...]
    nonrenewable: tuple[int, ...] = ()


class Job(msgspec.Struct, frozen=True):
    """A PSPLIB job (numbered from 1 in .sm/.mm, from 0 in .SCH) and its successors.

    `lags` is empty for finish-to-start (.sm/.mm) and start-to-start lags for .SCH.
    """

    number: int
    modes: tuple[JobMode, ...]
    successors: tuple[int, ...]
    lags: tuple[int, ...] = ()


class Instance(msgspec.Struct, frozen=True):
    name: str
    jobs: tuple[Job, ...]
    renewable: tuple[int, ...]
    nonrenewable: tuple[int, ...] = ()
    start_to_start: bool = False


class Reference(msgspec.Struct, frozen=True):
    """Published numbers for one instance; `infeasible` when proven to have no schedule."""

    lb: int | None
    ub: int | None
    infeasible: bool = False

    @property
    def optimum(self) -> int | None:
        return self.ub if self.lb is not None and self.lb == self.ub else None


def _ints(line: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", line)]


def _section(lines: Sequence[str], header: str) -> list[str]:
    """Data lines after `header` up to the next line of stars, skipping column titles."""
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header))
    body: list[str] = []
    for ln in lines[start + 1 :]:
        if ln.startswith("*"):
            break
        if ln.strip() and not ln.lstrip().startswith(("jobnr", "-", "R ", "N ")):
            body.append(ln)
    return body


def _parse_psplib(text: str, name: str) -> Instance:
    lines = text.splitlines()
    n_ren = _ints(next(ln for ln in lines if "- renewable" in ln))[0]
    n_non = _ints(next(ln for ln in lines if "- nonrenewable" in ln))[0]
    succ: dict[int, tuple[int, ...]] = {}
    for ln in _section(lines, "PRECEDENCE RELATIONS"):
        nums = _ints(ln)
        succ[nums[0]] = tuple(nums[3 : 3 + nums[2]])
    modes: dict[int, list[JobMode]] = {j: [] for j in succ}
    job = 0
    for ln in _section(lines, "REQUESTS/DURATIONS"):
        nums = _ints(ln)
        # Continuation lines of a multi-mode job leave the job number empty.
        if len(nums) == 3 + n_ren + n_non:
            job = nums[0]
            nums = nums[1:]
        demands = nums[2:]
        modes[job].append(
            JobMode(nums[1], tuple(demands[:n_ren]), tuple(demands[n_ren : n_ren + n_non]))
        )
    caps = _ints(_section(lines, "RESOURCEAVAILABILITIES")[0])
    jobs = tuple(Job(j, tuple(modes[j]), succ[j]) for j in sorted(succ))
    return Instance(name, jobs, tuple(caps[:n_ren]), tuple(caps[n_ren : n_ren + n_non]))


def parse_sm(text: str, name: str = "") -> Instance:
    """A single-mode RCPSP instance."""
    return _parse_psplib(text, name)


def parse_mm(text: str, name: str = "") -> Instance:
    """A multi-mode RCPSP instance (N k columns become non-renewable limits)."""
    return _parse_psplib(text, name)


def parse_sch(text: str, name: str = "") -> Instance:
    """An RCPSP/max (ProGen/max) instance: start-to-start lags, negative ones are maximum lags."""
    rows = [_ints(ln.replace("[", " ").replace("]", " ")) for ln in text.splitlines() if ln.strip()]
    n_real, n_ren, n_non = rows[0][0], rows[0][1], rows[0][2]
    n = n_real + 2
    succ: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for r in rows[1 : 1 + n]:
        k = r[2]
        succ[r[0]] = (tuple(r[3 : 3 + k]), tuple(r[3 + k : 3 + 2 * k]))
    modes: dict[int, list[JobMode]] = {j: [] for j in succ}
    for r in rows[1 + n : 1 + 2 * n]:
        demands = r[3:]
        modes[r[0]].append(
            JobMode(r[2], tuple(demands[:n_ren]), tuple(demands[n_ren : n_ren + n_non]))
        )
    caps = rows[1 + 2 * n]
    jobs = tuple(Job(j, tuple(modes[j]), succ[j][0], succ[j][1]) for j in sorted(succ))
    return Instance(name, jobs, tuple(caps[:n_ren]), tuple(caps[n_ren : n_ren + n_non]), True)


def load(path: str | Path) -> Instance:
    """Read any PSPLIB file, choosing the parser by suffix."""
    p = Path(path)
    text = p.read_text()
    match p.suffix.lower():
        case ".sm":
            return parse_sm(text, p.stem)
        case ".mm":
            return parse_mm(text, p.stem)
        case ".sch":
            return parse_sch(text, p.stem)
        case other:
            raise ValueError(f"not a PSPLIB instance suffix: {other}")


def to_problem(instance: Instance) -> Problem:
    """The Problem form: one task per job (dummies included), objective makespan, unit periods."""
    index = {j.number: i for i, j in enumerate(instance.jobs)}
    tasks = tuple(
        Task(
            id=str(j.number),
            modes=tuple(
                Mode(
                    id=str(m + 1),
                    duration=jm.duration,
                    demands=jm.renewable,
                    consumes=jm.nonrenewable,
                )
                for m, jm in enumerate(j.modes)
            ),
        )
        for j in instance.jobs
    )
    edges: list[Edge] = []
    for j in instance.jobs:
        for k, s in enumerate(j.successors):
            lag = j.lags[k] if instance.start_to_start else 0
            edges.append(Edge(index[j.number], index[s], lag, instance.start_to_start))
    return Problem(
        name=instance.name,
        tasks=tasks,
        edges=tuple(edges),
        resources=tuple(Resource(f"R{k + 1}", c) for k, c in enumerate(instance.renewable)),
        nonrenewables=tuple(Resource(f"N{k + 1}", c) for k, c in enumerate(instance.nonrenewable)),
        objective="makespan",
        unit="period",
    )


def _opt_int(text: str) -> int | None:
    return int(text) if text.strip() else None


def read_references(psplib_dir: str | Path, benchmark: str) -> dict[str, Reference]:
    """Published optimum/bounds by instance stem for a folder name (j30, mm_j10, rcpsp_max_j30...).

    Optima tables give lb == ub; bound tables give best_lb/best_ub; RCPSP/max gives
    `n`, `lb..ub` or `unsat`.
    """
    bounds = Path(psplib_dir) / "bounds"
    out: dict[str, Reference] = {}
    if benchmark == "rcpsp_max_j30":
        with (bounds / "rcpsp_max_j30_kobe_optimum.csv").open() as f:
            for row in csv.DictReader(f):
                stem, value = Path(row["problem"]).stem, row["optimum"].strip()
                if value == "unsat":
                    out[stem] = Reference(None, None, infeasible=True)
                elif ".." in value:
                    lo, hi = value.split("..")
                    out[stem] = Reference(int(lo), int(hi))
                else:
                    out[stem] = Reference(int(value), int(value))
        return out
    opt = bounds / f"{benchmark}_opt.csv"
    if opt.exists():
        with opt.open() as f:
            for row in csv.DictReader(f):
                v = int(row["optimum"])
                out[row["instance"]] = Reference(v, v)
        return out
    with (bounds / f"{benchmark}_bounds.csv").open() as f:
        for row in csv.DictReader(f):
            out[row["instance"]] = Reference(_opt_int(row["best_lb"]), _opt_int(row["best_ub"]))
    return out
