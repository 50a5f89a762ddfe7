"""What `moon list` prints: the index's rows as a table. Apart from moon/screens.py so that
`moon list` imports nothing of the engine's, and drawn as plain lines (ANSI colours on a
terminal) because importing rich costs a tenth of its 0.4 s start-up budget; `list_view` is the
same table as a rich renderable, for screens that already use rich.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["LIST_STATUSES", "STATUS_STYLE", "clock", "list_lines", "list_view"]

# The index's statuses: a workflow's own ones and the engine's verdict on an unverifiable one.
LIST_STATUSES = ("running", "completed", "failed", "compensating", "compensated", "cancelled",
                 "quarantined")
STATUS_STYLE = {"completed": "green", "running": "cyan", "scheduled": "cyan", "failed": "red",
                 "compensation_failed": "bold red", "quarantined": "bold red",
                 "compensated": "yellow", "compensating": "yellow", "cancelled": "yellow",
                 "backoff": "magenta", "pending": "dim"}


def clock(ms: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else ""


_ANSI = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "magenta": "35",
         "cyan": "36"}
_RIGHT = ("tokens", "seq")


def _paint(text: str, style: str, colour: bool) -> str:
    codes = ";".join(_ANSI[s] for s in style.split() if s in _ANSI)
    return f"\x1b[{codes}m{text}\x1b[0m" if colour and codes else text


def _cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    with_detail = any(r.get("detail") for r in rows)
    columns = ["workflow", "status", "done", "tokens", "seq", "updated",
               *(("detail",) if with_detail else ())]
    body = []
    for r in rows:
        cells = [str(r.get("workflow_id", "")), str(r.get("status", "")),
                 f"{r.get('completed', 0)}/{r.get('steps', 0)}", str(r.get("tokens", 0)),
                 str(r.get("version", 0)), clock(r.get("updated_ms"))]
        if with_detail:
            cells.append(str(r.get("detail", "")))
        body.append(cells)
    return columns, body


def list_lines(rows: Sequence[Mapping[str, Any]], *, colour: bool = False) -> list[str]:
    """`moon list` as text lines: a bold header, one workflow a row, its status coloured."""
    columns, body = _cells(rows)
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]

    def line(cells: Sequence[str], styles: Sequence[str]) -> str:
        out = []
        for i, (cell, style) in enumerate(zip(cells, styles, strict=True)):
            last = i == len(cells) - 1
            padded = cell.rjust(widths[i]) if columns[i] in _RIGHT else \
                (cell if last else cell.ljust(widths[i]))
            out.append(_paint(padded, style, colour))
        return "  ".join(out).rstrip()

    lines = [line(columns, ["bold"] * len(columns))]
    for cells in body:
        styles = ["bold", STATUS_STYLE.get(cells[1], ""), *[""] * (len(cells) - 2)]
        lines.append(line(cells, styles))
    return lines


def list_view(rows: Sequence[Mapping[str, Any]]) -> Table:
    """`moon list`: one workflow a row (index entries as mappings, the engine's WorkflowSummary
    fields); `detail` (why one is quarantined) only when any has one."""
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    with_detail = any(r.get("detail") for r in rows)
    for column in ("workflow", "status", "done", "tokens", "seq", "updated",
                   *(("detail",) if with_detail else ())):
        table.add_column(column, no_wrap=column in ("workflow", "status"),
                         justify="right" if column in ("tokens", "seq") else "left")
    for r in rows:
        status = str(r.get("status", ""))
        cells: list[Any] = [Text(str(r.get("workflow_id", "")), style="bold"),
                            Text(status, style=STATUS_STYLE.get(status, "")),
                            f"{r.get('completed', 0)}/{r.get('steps', 0)}",
                            str(r.get("tokens", 0)), str(r.get("version", 0)),
                            clock(r.get("updated_ms"))]
        if with_detail:
            cells.append(str(r.get("detail", "")))
        table.add_row(*cells)
    return table
