"""Plans for people and scripts: a terminal Gantt chart (rich) and the plan's JSON shape.

`to_json` is the one output contract of the CLI and service replies, so its keys are fixed here.
The chart is one row per step (its name whole beside its bar, so neighbouring bars never run
together), sized to the console it is printed on, with axis ticks and the deadline drawn, and
followed by a start/end/executor/cost table.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from maestro.anticipate import Anticipation
from maestro.plan import Assignment, Plan
from maestro.problem import Problem
from streams.replies import CODES, Refusal

__all__ = [
    "Gantt",
    "anticipation_json",
    "anticipation_table",
    "axis_ticks",
    "gantt",
    "gantt_text",
    "step_costs",
    "to_json",
]

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


def _fmt(value: int, unit: str) -> str:
    return f"{value / 1000:g}s" if unit == "ms" else str(value)


def step_costs(problem: Problem, plan: Plan) -> dict[str, int]:
    """What each assigned step costs on its executor (the chosen mode's cost)."""
    modes = {(t.id, m.id): m.cost for t in problem.tasks for m in t.modes}
    return {a.step: modes[(a.step, a.executor)] for a in plan.assignments
            if (a.step, a.executor) in modes}


def axis_ticks(span: int, cols: int, unit: str, min_gap: int = 9) -> list[tuple[int, int]]:
    """(time, column) of round-numbered ticks at least `min_gap` columns apart."""
    if span <= 0 or cols <= 1:
        return [(0, 0)]
    step, k, nice = 1, 0, (1, 2, 5)
    while span / step * min_gap > cols:  # too many ticks: the next 1-2-5 step
        k += 1
        step = nice[k % 3] * 10 ** (k // 3)
    del unit  # the same 1-2-5 steps read well in ms (shown as seconds) and in periods
    return [(t, _column(t, span, cols)) for t in range(0, span + 1, step)]


def _column(t: int, span: int, cols: int) -> int:
    return min(cols - 1, round(t * (cols - 1) / span)) if span else 0


def _bar(a: Assignment, span: int, cols: int) -> tuple[int, str]:
    """Where a step's bar starts and its characters: `├name───┤`, shortened as it must."""
    lo = _column(a.start, span, cols)
    hi = max(_column(a.end, span, cols), lo + 1)
    n = hi - lo
    if n == 1:
        return lo, "▌"
    inner = n - 2
    label = a.step if len(a.step) <= inner else ""
    return lo, "├" + label.ljust(inner, "─") + "┤"


class Gantt:
    """The chart as a rich renderable: it takes the width of the console it is printed on."""

    def __init__(self, plan: Plan, *, deadline: int | None = None, title: str = "",
                 costs: Mapping[str, int] | None = None, width: int | None = None) -> None:
        self.plan, self.deadline, self.title = plan, deadline, title
        self.costs, self.width = dict(costs or {}), width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = min(self.width or options.max_width, options.max_width)
        yield from self.lines(width)
        yield Text("")
        yield self.table()

    def lines(self, width: int) -> Iterator[Text]:
        plan = self.plan
        rows = sorted(plan.assignments, key=lambda a: (a.start, a.end, a.step))
        name_w = max((len(a.step) for a in rows), default=4)
        exec_w = max((len(a.executor) for a in rows), default=0)
        cols = width - name_w - exec_w - 2
        show_exec = cols >= 24
        if not show_exec:
            cols = max(width - name_w - 1, 10)
        span = max(plan.makespan or 0, self.deadline or 0, max((a.end for a in rows), default=0), 1)
        mark = _column(self.deadline, span, cols) if self.deadline is not None else None
        indent = name_w + 1 + (exec_w + 1 if show_exec else 0)
        if self.title:
            yield Text(self.title, style="bold")
        yield self._axis(span, cols, indent, mark)
        colour = {a.step: _COLOURS[k % len(_COLOURS)] for k, a in enumerate(rows)}
        for a in rows:
            line = Text(no_wrap=True, overflow="ignore")
            line.append(a.step.ljust(name_w + 1), style="bold")
            if show_exec:
                line.append(a.executor.ljust(exec_w + 1), style="dim")
            cells: list[tuple[str, str]] = [(" ", "")] * cols
            lo, bar = _bar(a, span, cols)
            for k, ch in enumerate(bar):
                if lo + k < cols:
                    cells[lo + k] = (ch, f"black on {colour[a.step]}")
            if mark is not None:
                ch, style = cells[mark]
                cells[mark] = ("|", "bold red") if ch == " " else (ch, style + " underline")
            for ch, style in cells:
                line.append(ch, style=style)
            yield line
        caption = f"status {plan.status}, makespan {_fmt(plan.makespan or 0, plan.unit)}"
        if plan.cost is not None:
            caption += f", cost {plan.cost}"
        if self.deadline is not None:
            caption += f", deadline {_fmt(self.deadline, plan.unit)} (red |)"
        yield Text(caption, style="dim")

    def _axis(self, span: int, cols: int, indent: int, mark: int | None) -> Text:
        """Tick labels above a ruler: `0s      60s      120s`, the deadline column marked."""
        labels = [" "] * (cols + 8)
        ruler = ["─"] * cols
        for t, c in axis_ticks(span, cols, self.plan.unit):
            text = _fmt(t, self.plan.unit)
            at = min(c, cols - len(text)) if c else 0
            if all(ch == " " for ch in labels[max(at - 1, 0):at + len(text) + 1]):
                labels[at:at + len(text)] = list(text)
            ruler[c] = "┬"
        axis = Text(no_wrap=True, overflow="ignore")
        axis.append(" " * indent + "".join(labels).rstrip() + "\n", style="dim")
        axis.append(" " * indent, style="dim")
        for c, ch in enumerate(ruler):
            axis.append("|" if c == mark else ch, style="bold red" if c == mark else "dim")
        return axis

    def table(self) -> Table:
        plan = self.plan
        table = Table(title_justify="left", box=None, pad_edge=False, padding=(0, 2, 0, 0),
                      header_style="bold")
        for column in ("step", "executor", "start", "end", "duration", "cost"):
            table.add_column(column, no_wrap=True,
                             justify="left" if column in ("step", "executor") else "right")
        for a in sorted(plan.assignments, key=lambda a: (a.start, a.end, a.step)):
            cost = self.costs.get(a.step)
            late = self.deadline is not None and a.end > self.deadline
            table.add_row(a.step, a.executor, _fmt(a.start, plan.unit),
                          Text(_fmt(a.end, plan.unit), style="bold red" if late else ""),
                          _fmt(a.end - a.start, plan.unit), "" if cost is None else str(cost))
        return table


def gantt(plan: Plan, *, deadline: int | None = None, width: int | None = None,
          title: str = "", costs: Mapping[str, int] | None = None) -> Gantt:
    """Steps as labelled bars on a time axis with ticks, the deadline as a red `|` down the
    chart, then the start/end/executor/cost table; as wide as the console (or `width`)."""
    return Gantt(plan, deadline=deadline, title=title, costs=costs, width=width)


def gantt_text(plan: Plan, *, deadline: int | None = None, width: int = 100,
               costs: Mapping[str, int] | None = None) -> str:
    """The Gantt chart as plain text (no colour) `width` columns wide, for logs and tests."""
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(
        gantt(plan, deadline=deadline, costs=costs)
    )
    return buf.getvalue()
