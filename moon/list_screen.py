"""What `moon list` prints: the index's rows as a table. Apart from moon/screens.py so that
`moon list` imports rich's table and nothing of the engine's (its start-up budget is 0.4 s).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

__all__ = ["LIST_STATUSES", "STATUS_STYLE", "clock", "list_view"]

# The index's statuses: a workflow's own ones and the engine's verdict on an unverifiable one.
LIST_STATUSES = ("running", "completed", "failed", "compensating", "compensated", "cancelled",
                 "quarantined")
STATUS_STYLE = {"completed": "green", "running": "cyan", "scheduled": "cyan", "failed": "red",
                 "compensation_failed": "bold red", "quarantined": "bold red",
                 "compensated": "yellow", "compensating": "yellow", "cancelled": "yellow",
                 "backoff": "magenta", "pending": "dim"}


def clock(ms: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else ""


def list_view(rows: Sequence[Mapping[str, Any]]) -> Table:
    """`moon list`: one workflow a row (index entries as mappings, the engine's WorkflowSummary
    fields); `detail` (why one is quarantined) only when any has one."""
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
