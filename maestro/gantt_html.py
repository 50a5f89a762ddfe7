"""`maestro plan --html FILE`: the plan's Gantt as one self-contained HTML page (inline CSS and
SVG, no script, no external asset), so it opens anywhere, offline, and can be attached as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from maestro.gantt import axis_ticks
from maestro.plan import Plan

__all__ = ["gantt_html"]

_FILLS = ("#0e7490", "#a21caf", "#15803d", "#a16207", "#1d4ed8", "#b91c1c", "#0891b2", "#c026d3")
_ROW, _LABEL, _CHART, _TOP = 26, 260, 880, 34

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#111;
background:#fff}
h1{font-size:1.25rem;margin:0 0 .25rem}
p.meta{color:#555;margin:0 0 1rem}
svg{display:block;max-width:100%;height:auto}
svg text{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
table{border-collapse:collapse;margin-top:1.5rem}
th,td{padding:.25rem .9rem .25rem 0;text-align:right;font-variant-numeric:tabular-nums}
th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}
th{border-bottom:1px solid #ccc}
td.late{color:#b91c1c;font-weight:600}
@media (prefers-color-scheme:dark){body{background:#111;color:#eee}p.meta{color:#aaa}
svg text{fill:#eee}th{border-color:#444}}
"""


def _fmt(value: int, unit: str) -> str:
    return f"{value / 1000:g}s" if unit == "ms" else str(value)


def gantt_html(plan: Plan, *, deadline: int | None = None,
               costs: Mapping[str, int] | None = None, title: str = "plan") -> str:
    """The whole page: title and summary, the chart (a bar per step, named whole, axis ticks,
    the deadline as a red line), and the start/end/executor/cost table."""
    rows = sorted(plan.assignments, key=lambda a: (a.start, a.end, a.step))
    span = max(plan.makespan or 0, deadline or 0, max((a.end for a in rows), default=0), 1)
    unit, costs = plan.unit, dict(costs or {})

    def x(t: int) -> float:
        return _LABEL + t * _CHART / span

    height = _TOP + _ROW * len(rows) + 10
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_LABEL + _CHART + 180} '
           f'{height}" role="img" aria-label="Gantt chart of {escape(title)}">']
    for t, _ in axis_ticks(span, 100, unit, min_gap=10):
        svg.append(f'<line x1="{x(t):.1f}" y1="{_TOP - 8}" x2="{x(t):.1f}" y2="{height - 10}" '
                   'stroke="#8884" stroke-width="1"/>')
        svg.append(f'<text x="{x(t):.1f}" y="{_TOP - 14}" text-anchor="middle">'
                   f'{escape(_fmt(t, unit))}</text>')
    for k, a in enumerate(rows):
        y = _TOP + k * _ROW
        width = max(x(a.end) - x(a.start), 2.0)
        tip = f"{a.step} on {a.executor}: {_fmt(a.start, unit)} to {_fmt(a.end, unit)}"
        svg.append(f'<text x="{_LABEL - 10}" y="{y + 17}" text-anchor="end">'
                   f'{escape(a.step)}</text>')
        svg.append(f'<rect x="{x(a.start):.1f}" y="{y + 4}" width="{width:.1f}" '
                   f'height="{_ROW - 8}" rx="3" fill="{_FILLS[k % len(_FILLS)]}">'
                   f'<title>{escape(tip)}</title></rect>')
        svg.append(f'<text x="{x(a.end) + 6:.1f}" y="{y + 17}" fill="#666">'
                   f'{escape(a.executor)}</text>')
    if deadline is not None:
        svg.append(f'<line x1="{x(deadline):.1f}" y1="{_TOP - 8}" x2="{x(deadline):.1f}" '
                   f'y2="{height - 10}" stroke="#dc2626" stroke-width="2" '
                   'class="deadline"/>')
        svg.append(f'<text x="{x(deadline) - 4:.1f}" y="{height - 14}" text-anchor="end" '
                   f'fill="#dc2626">deadline {escape(_fmt(deadline, unit))}</text>')
    svg.append("</svg>")
    meta = f"status {plan.status}, makespan {_fmt(plan.makespan or 0, unit)}"
    if plan.cost is not None:
        meta += f", cost {plan.cost}"
    if deadline is not None:
        meta += f", deadline {_fmt(deadline, unit)}"
    table = ["<table><thead><tr><th>step</th><th>executor</th><th>start</th><th>end</th>"
             "<th>duration</th><th>cost</th></tr></thead><tbody>"]
    for a in rows:
        late = ' class="late"' if deadline is not None and a.end > deadline else ""
        cost = costs.get(a.step)
        table.append(f"<tr><td>{escape(a.step)}</td><td>{escape(a.executor)}</td>"
                     f"<td>{_fmt(a.start, unit)}</td><td{late}>{_fmt(a.end, unit)}</td>"
                     f"<td>{_fmt(a.end - a.start, unit)}</td>"
                     f"<td>{'' if cost is None else cost}</td></tr>")
    table.append("</tbody></table>")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}: plan</title><style>{_STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1><p class=\"meta\">{escape(meta)}</p>"
            + "".join(svg) + "".join(table) + "</body></html>\n")
