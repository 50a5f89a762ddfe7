"""Plans for people and scripts: a terminal Gantt chart (rich) and the plan's JSON shape.

`to_json` is the one output contract of the CLI and service replies, so its keys are fixed here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from maestro.anticipate import Anticipation
from maestro.plan import Assignment, Plan
from streams.replies import CODES, Refusal

__all__ = ["anticipation_json", "anticipation_table", "gantt", "gantt_text", "to_json"]

_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta")


def anticipation_json(plan: Plan, anticipation: Anticipation | None) -> dict[str, Any] | None:
    """{p_on_time, p_success, samples, steps: [{id, executor, backup, retry_slack}],
    compensations: [{step, action}]}; a step with no other eligible executor has backup null."""
    if anticipation is None:
        return None
    backup = {b.step: b.executor for b in anticipation.backups}
    slack = {s.step: s.slack for s in anticipation.retry_slack}
    return {
        "p_on_time": anticipation.p_on_time,
        "p_success": anticipation.p_success,
        "samples": anticipation.samples,
        "steps": [
            {
                "id": a.step,
                "executor": a.executor,
                "backup": backup.get(a.step),
                "retry_slack": slack.get(a.step, 0),
            }
            for a in plan.assignments
        ],
        "compensations": [{"step": c.step, "action": c.action} for c in anticipation.compensations],
    }


def to_json(
    plan: Plan, reasons: Sequence[Refusal] = (), anticipation: Anticipation | None = None
) -> dict[str, Any]:
    """Exactly {status, makespan, bound, cost, steps: [{id, executor, start, end}], reasons,
    anticipation}, times in the plan's unit (ms for goals, periods for PSPLIB). `anticipation`
    is null when none was computed (a refusal, a PSPLIB instance).
    """
    return {
        "status": plan.status,
        "makespan": plan.makespan,
        "bound": plan.bound,
        "cost": plan.cost,
        "steps": [
            {"id": a.step, "executor": a.executor, "start": a.start, "end": a.end}
            for a in plan.assignments
        ],
        "reasons": [
            {
                "reason": r.reason.value,
                "code": CODES[r.reason],
                "detail": r.detail,
                "evidence": dict(r.evidence),
            }
            for r in reasons
        ],
        "anticipation": anticipation_json(plan, anticipation),
    }


def anticipation_table(plan: Plan, anticipation: Anticipation, *, title: str = "") -> Table:
    """Per step: who runs it, who takes over if it fails, the retry slack kept; p(on time)."""
    backup = {b.step: b.executor for b in anticipation.backups}
    slack = {s.step: s.slack for s in anticipation.retry_slack}
    caption = (
        f"p(on time) {anticipation.p_on_time:.1%}, p(success) {anticipation.p_success:.1%} "
        f"over {anticipation.samples} seeded runs of executor failures"
    )
    table = Table(title=title or "failure anticipation", caption=caption, title_justify="left")
    for column in ("step", "executor", "backup", "retry slack"):
        table.add_column(column, no_wrap=True)
    for a in sorted(plan.assignments, key=lambda a: (a.start, a.step)):
        kept = slack.get(a.step, 0)
        table.add_row(
            a.step, a.executor, backup.get(a.step, "(none)"), _fmt(kept, plan.unit) if kept else ""
        )
    return table


def _lanes(assignments: Sequence[Assignment]) -> list[list[Assignment]]:
    """Greedy interval partitioning, so an executor running two steps at once gets two rows."""
    lanes: list[list[Assignment]] = []
    for a in sorted(assignments, key=lambda a: (a.start, a.end, a.step)):
        for lane in lanes:
            if lane[-1].end <= a.start:
                lane.append(a)
                break
        else:
            lanes.append([a])
    return lanes


def _fmt(value: int, unit: str) -> str:
    return f"{value / 1000:g}s" if unit == "ms" else str(value)


def gantt(plan: Plan, *, deadline: int | None = None, width: int = 60, title: str = "") -> Table:
    """Executors as rows, steps as labelled bars, the deadline as a red bar across the chart."""
    span = max(plan.makespan or 0, deadline or 0, 1)
    cols = max(width, 10)

    def col(t: int) -> int:
        return min(cols, round(t * cols / span))

    mark = col(deadline) if deadline is not None else None
    caption = f"status {plan.status}, makespan {_fmt(plan.makespan or 0, plan.unit)}"
    if plan.cost is not None:
        caption += f", cost {plan.cost}"
    if deadline is not None:
        caption += f", deadline {_fmt(deadline, plan.unit)} (red |)"
    table = Table(title=title or None, caption=caption, show_lines=False)
    table.add_column("executor", no_wrap=True)
    table.add_column(f"0 .. {_fmt(span, plan.unit)}", no_wrap=True)
    by_exec: dict[str, list[Assignment]] = {}
    for a in plan.assignments:
        by_exec.setdefault(a.executor, []).append(a)
    colour = {a.step: _COLOURS[k % len(_COLOURS)] for k, a in enumerate(plan.assignments)}
    for executor in sorted(by_exec):
        for n, lane in enumerate(_lanes(by_exec[executor])):
            cells: list[tuple[str, str]] = [(" ", "")] * (cols + 1)
            for a in lane:
                lo, hi = col(a.start), max(col(a.end), col(a.start) + 1)
                label = a.step[: hi - lo].ljust(hi - lo, "─")
                for k, ch in enumerate(label):
                    cells[lo + k] = (ch, f"black on {colour[a.step]}")
            if mark is not None:
                cells[mark] = ("|", "bold red")
            bar = Text()
            for ch, style in cells:
                bar.append(ch, style=style)
            table.add_row(executor if n == 0 else "", bar)
    return table


def gantt_text(plan: Plan, *, deadline: int | None = None, width: int = 60) -> str:
    """The Gantt chart as plain text (no colour), for logs and tests."""
    buf = io.StringIO()
    Console(file=buf, width=width + 40, color_system=None).print(
        gantt(plan, deadline=deadline, width=width)
    )
    return buf.getvalue()
