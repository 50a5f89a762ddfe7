"""What a solve is given: its knobs (`SolveOptions`) and one wall-clock `Deadline` shared by
every phase of a plan (heuristic, CP-SAT rounds, a caller's own phases)."""

from __future__ import annotations

import os
import time

import msgspec

__all__ = ["Deadline", "SolveOptions", "available_workers"]


class SolveOptions(msgspec.Struct, frozen=True):
    """Solver knobs. `time_limit_s` is wall time for the whole call. `workers` None follows the
    cores this process may run on. `deterministic` interleaves the workers' search and stops on
    CP-SAT's deterministic time (and the heuristic on a schedule count), so the same input, seed
    and workers give the same plan, unless the wall-clock limit comes first on a loaded machine.
    """

    time_limit_s: float = 2.0
    workers: int | None = None
    seed: int = 0
    deterministic: bool = True
    hint: bool = True
    # share of the limit (at most heuristic.FIRST_CAP_S) for sampling + forward-backward
    # improvement before the first CP-SAT round
    heuristic_share: float = 0.1


def available_workers() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Deadline:
    """One wall-clock deadline (monotonic), shared by every phase of a plan."""

    __slots__ = ("at",)

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + max(0.0, seconds)

    def earlier(self, seconds: float) -> Deadline:
        """The same deadline, `seconds` sooner (time kept for a phase after this one)."""
        out = Deadline(0.0)
        out.at = self.at - max(0.0, seconds)
        return out

    def left(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return time.monotonic() >= self.at
