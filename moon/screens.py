"""What `moon status` and `moon list` print: pure functions from a folded journal (and its
sequence-numbered decisions) to rich renderables and JSON-ready values. No broker, no clock:
`now_ms` is a parameter, so a test renders any screen at any width.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from moon.list_screen import LIST_STATUSES, STATUS_STYLE, clock, list_view
from moon.liveness import Pool, pool_name
from moon.workflow import StepState, WorkflowState
from streams.moon_events import (
    CompensationFailed,
    Decision,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepTimedOut,
)

__all__ = [
    "LIST_STATUSES",
    "Seen",
    "decoded",
    "events_of",
    "list_view",
    "preview",
    "shown_status",
    "state_json",
    "status_view",
    "wait_hints",
    "waiting_pools",
]

_ENDS = (StepCompleted, StepFailed, StepTimedOut, StepCompensated, CompensationFailed)
EVENTS_SHOWN = 30


class Seen(msgspec.Struct, frozen=True):
    """One journal message as the screens show it: its stream sequence and what it caused."""

    seq: int
    at_ms: int
    command: str
    events: tuple[str, ...]


def _kind(tag: str) -> str:
    return tag.removeprefix("moon.")


def events_of(items: Iterable[tuple[int, Decision]]) -> list[Seen]:
    """(seq, decision) pairs as lines: the command and each event, with its step."""
    out = []
    for seq, decision in items:
        info = msgspec.structs.asdict(decision.command)
        names = []
        for event in decision.events:
            step = getattr(event, "step", "")
            tag = _kind(type(event).__struct_config__.tag or type(event).__name__)  # type: ignore[arg-type]
            names.append(f"{tag} {step}".rstrip())
        command_tag = type(decision.command).__struct_config__.tag or ""
        out.append(Seen(seq=seq, at_ms=int(info.get("at_ms", 0)), command=_kind(str(command_tag)),
                        events=tuple(names)))
    return out


def _ends(items: Iterable[tuple[int, Decision]]) -> dict[str, int]:
    """When each step's latest attempt (or compensation) ended, from the journal's events."""
    ends: dict[str, int] = {}
    for _, decision in items:
        for event in decision.events:
            if isinstance(event, _ENDS):
                ends[event.step] = event.at_ms
    return ends


def shown_status(state: WorkflowState) -> str:
    """The workflow's status, except that compensations that failed are not `compensated`."""
    if state.status in ("compensated", "compensating", "failed") and any(
            s.status == "compensation_failed" for s in state.steps.values()):
        return "compensation_failed"
    return state.status


def _waiting(state: WorkflowState) -> list[tuple[str, StepState]]:
    """Steps scheduled that no executor has started."""
    if state.status not in ("running", "compensating"):
        return []
    return [(n, s) for n, s in state.steps.items()
            if s.status == "scheduled" and s.started_at is None]


def waiting_pools(state: WorkflowState) -> list[str]:
    """The WORK consumers whose liveness the hints would name (moon/liveness.py)."""
    return sorted({pool_name(capability=s.spec.capability, executor=s.executor or s.assigned)
                   for _, s in _waiting(state)})


def _not_taken(name: str, step: StepState, pools: Mapping[str, Pool] | None) -> str:
    executor = step.executor or step.assigned
    pool = None if pools is None else pools.get(
        pool_name(capability=step.spec.capability, executor=executor))
    if pool is not None and not pool.live:
        if executor:
            return f"{name}: executor {executor} is not live (nothing takes its orders)"
        return f"{name}: no live executor offers {step.spec.capability}"
    if pool is not None and pool.waiting == 0:
        who = f"executor {executor} is" if executor else \
            f"executors offering {step.spec.capability} are"
        return f"{name}: waiting: all {who} busy ({pool.in_flight} running)"
    who = f"executor {executor}" if executor else \
        f"executor offering {step.spec.capability}"
    return f"{name}: no executor has taken it yet (waiting for an {who})"


def wait_hints(state: WorkflowState, pools: Mapping[str, Pool] | None = None) -> list[str]:
    """Why a workflow that is not over is not moving, in the operator's terms. `pools`: the
    WORK consumers' state (moon/liveness.py), when the caller asked the broker."""
    if state.status not in ("running", "compensating"):
        return []
    hints = []
    failed = [n for n, s in state.steps.items() if s.status == "failed"]
    if failed and state.on_failure == "wait":
        hints.append(f"waiting for a replan (on_failure: wait): {', '.join(failed)} failed "
                     "for good")
    if state.halted:
        hints.append("budget exhausted: waiting for a replan that raises it")
    waiting = dict(_waiting(state))
    for name, step in state.steps.items():
        if name in waiting:
            hints.append(_not_taken(name, step, pools))
        elif step.status in ("backoff", "compensation_backoff") and step.retry_due_ms:
            hints.append(f"{name}: retries at {clock(step.retry_due_ms)}")
    return hints


def _seconds(ms: int | None) -> str:
    if ms is None or ms < 0:
        return ""
    if ms < 1000:
        return f"{ms}ms"
    return f"{ms / 1000:.1f}s" if ms < 600_000 else f"{ms / 60_000:.1f}m"


def preview(data: bytes | None, limit: int = 60) -> str:
    """A result as text: UTF-8 decoded and flattened to one line, else its size in bytes."""
    if not data:
        return ""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return f"<{len(data)} bytes, not UTF-8>"
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def decoded(value: Any) -> Any:
    """A value as JSON-ready builtins, bytes as text where they are UTF-8 (else
    {"base64": …}), so `--json` shows results a person can read."""
    return _text(msgspec.to_builtins(value, builtin_types=(bytes,)))


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def state_json(state: WorkflowState, seen: Sequence[Seen] = (), *,
               quarantined: tuple[int, str] | None = None,
               pools: Mapping[str, Pool] | None = None) -> dict[str, Any]:
    """`moon status --json`: the folded state (results decoded), the shown status, the hints,
    the journal's sequence numbers, and the quarantine if the journal stops verifying."""
    out: dict[str, Any] = decoded(state)
    out["shown_status"] = "quarantined" if quarantined else shown_status(state)
    out["hints"] = wait_hints(state, pools)
    out["events"] = [msgspec.to_builtins(s) for s in seen]
    out["quarantined"] = (None if quarantined is None
                          else {"seq": quarantined[0], "detail": quarantined[1]})
    return out


def _columns(state: WorkflowState, ends: dict[str, int], now_ms: int) -> dict[str, list[str]]:
    cols: dict[str, list[str]] = {k: [] for k in (
        "step", "status", "try", "executor", "start", "end", "duration", "tokens")}
    for name, step in state.steps.items():
        end = ends.get(name) if step.status not in ("scheduled", "running") else None
        until = end if end is not None else (now_ms if step.status == "running" else None)
        cols["step"].append(name)
        cols["status"].append(step.status)
        cols["try"].append(str(step.attempt) if step.attempt > 1 else "")
        cols["executor"].append(step.executor or "")
        cols["start"].append(clock(step.started_at))
        cols["end"].append(clock(end))
        cols["duration"].append(_seconds(until - step.started_at)
                                if until is not None and step.started_at else "")
        cols["tokens"].append(str(step.usage.tokens) if step.usage.tokens else "")
    return cols


def _table(cols: dict[str, list[str]], names: Sequence[str]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 2, 0, 0))
    for name in names:
        table.add_column(name, no_wrap=name in ("step", "status"),
                         justify="right" if name in ("try", "duration", "tokens") else "left",
                         min_width=max(map(len, cols[name])) if name == "step" else None)
    for k in range(len(cols["step"])):
        table.add_row(*(Text(cols[n][k], style=STATUS_STYLE.get(cols[n][k], "") if n == "status"
                             else "bold" if n == "step" else "") for n in names))
    return table


def status_view(state: WorkflowState, seen: Sequence[Seen] = (), *, width: int = 80,
                now_ms: int = 0, quarantined: tuple[int, str] | None = None,
                items: Sequence[tuple[int, Decision]] = (), hints: bool = True,
                pools: Mapping[str, Pool] | None = None) -> RenderableType:
    """One workflow for a terminal of `width` columns: a headline, its steps (empty columns
    dropped; split in two tables when one would not fit), errors and results on their own
    lines, why it waits, and the journal's messages with their stream sequence numbers."""
    status = "quarantined" if quarantined else shown_status(state)
    head = Text()
    head.append(state.workflow_id, style="bold")
    head.append("  ")
    head.append(status, style=STATUS_STYLE.get(status, ""))
    if state.plan_id:
        head.append(f"  plan {state.plan_id} r{state.plan_revision}", style="dim")
    if state.usage.tokens:
        head.append(f"  {state.usage.tokens} tokens", style="dim")
    if state.deadline_ms:
        head.append(f"  deadline {clock(state.deadline_ms)}" + (" (late)" if state.late else ""),
                    style="red" if state.late else "dim")
    parts: list[RenderableType] = [head]
    if quarantined is not None:
        parts.append(Text(f"quarantined: journal seq {quarantined[0]} does not verify "
                          f"({quarantined[1]}); the state below is the verified part before it",
                          style="bold red"))
    for hint in wait_hints(state, pools) if hints else ():
        parts.append(Text(f"… {hint}", style="yellow"))
    cols = _columns(state, _ends(items), now_ms)
    names = [n for n, values in cols.items() if n == "step" or any(values)]
    natural = sum(max([len(n), *map(len, cols[n])]) + 2 for n in names)
    if natural <= width:
        parts.append(_table(cols, names))
    else:  # two narrower tables beat one whose cells wrap
        timing = {"start", "end", "duration"}
        parts.append(_table(cols, [n for n in names if n not in timing]))
        parts.append(_table(cols, ["step", *[n for n in names if n in timing]]))
    parts.extend(_details(state, width))
    if seen:
        parts.append(_events(seen))
    return Group(*parts)


def _details(state: WorkflowState, width: int) -> list[RenderableType]:
    lines: list[RenderableType] = []
    for name, step in state.steps.items():
        lines.extend(_detail(name, step, width))
    return lines


def _detail(name: str, step: StepState, width: int) -> list[Text]:
    out = []
    if step.error:
        line = Text("✗ ", style="red")
        line.append(f"{name}", style="bold")
        line.append(f" (attempt {step.attempt}): ", style="dim")
        line.append(" ".join(step.error.split()))
        out.append(line)
    if step.result:
        line = Text("→ ", style="green")
        line.append(name, style="bold")
        line.append(": ")
        line.append(preview(step.result, max(20, width - len(name) - 6)))
        out.append(line)
    return out


def _events(seen: Sequence[Seen]) -> RenderableType:
    shown = list(seen)[-EVENTS_SHOWN:]
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold",
                  title="journal (#seq: what replay --to-seq, fork --at-seq and diff take)",
                  title_justify="left", title_style="dim")
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("time", no_wrap=True)
    table.add_column("command", no_wrap=True)
    table.add_column("events")
    for s in shown:
        table.add_row(f"#{s.seq}", clock(s.at_ms), s.command, ", ".join(s.events))
    if len(seen) > len(shown):
        table.caption = f"{len(seen) - len(shown)} earlier messages not shown (moon tail)"
    return table
