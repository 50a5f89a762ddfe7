"""What the engine says about each decision it journals: one structured log line per step
transition (scheduled, started, completed, failed with its error, retry, timeout, compensated)
and per replan, deviation and workflow end.

`narration` is pure (an event and its workflow to a `Line`, or None for the chatter a log
reader does not want: heartbeats, checkpoints); `narrate` hands the lines to a structlog-style
logger. The engine calls it once per newly journaled decision, never for a duplicate, so a
line is a fact the journal holds, said once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import msgspec

from streams.moon_events import (
    BudgetExhausted,
    CompensationFailed,
    CompensationScheduled,
    CompensationStarted,
    Deviation,
    Dispatched,
    MoonEvent,
    ReplanApplied,
    RetryScheduled,
    StepCheckpointed,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepHeartbeat,
    StepScheduled,
    StepStarted,
    StepTimedOut,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowFailed,
)

__all__ = ["Line", "joined", "narrate", "narration"]

ERROR_SHOWN = 300  # an error's first characters: the journal keeps it whole


class Line(msgspec.Struct, frozen=True):
    level: Literal["info", "warning"]
    event: str
    fields: dict[str, Any]


class _Logger(Protocol):
    def info(self, event: str, **fields: Any) -> Any: ...
    def warning(self, event: str, **fields: Any) -> Any: ...


def narration(workflow: str, event: MoonEvent) -> Line | None:
    """The log line for one journaled event, or None when it is not worth one."""
    wf = {"workflow": workflow}
    match event:
        case Dispatched():
            return Line("info", "workflow_dispatched", {
                **wf, "steps": len(event.steps), "plan": event.plan_id,
                "on_failure": event.on_failure})
        case StepScheduled():
            return Line("info", "step_scheduled", {
                **wf, "step": event.step, "attempt": event.attempt,
                "executor": event.executor or "any"})
        case StepStarted():
            return Line("info", "step_started", {
                **wf, "step": event.step, "attempt": event.attempt, "executor": event.executor})
        case StepCompleted():
            return Line("info", "step_completed", {
                **wf, "step": event.step, "attempt": event.attempt,
                "tokens": event.usage.tokens, "wall_ms": event.usage.wall_ms})
        case StepFailed():
            return Line("warning", "step_failed", {
                **wf, "step": event.step, "attempt": event.attempt,
                "error": event.error[:ERROR_SHOWN], "error_type": event.error_type,
                "will_retry": event.will_retry})
        case StepTimedOut():
            return Line("warning", "step_timed_out", {
                **wf, "step": event.step, "attempt": event.attempt, "timer": event.timer,
                "will_retry": event.will_retry})
        case RetryScheduled():
            return Line("info", "step_retry_scheduled", {
                **wf, "step": event.step, "attempt": event.attempt, "delay_ms": event.delay_ms})
        case CompensationStarted():
            return Line("warning", "compensation_started", {
                **wf, "reason": event.reason[:ERROR_SHOWN], "steps": list(event.steps)})
        case CompensationScheduled():
            return Line("info", "compensation_scheduled", {
                **wf, "step": event.step, "attempt": event.attempt,
                "capability": event.capability, "executor": event.executor or "any"})
        case StepCompensated():
            return Line("info", "step_compensated", {
                **wf, "step": event.step, "attempt": event.attempt})
        case CompensationFailed():
            return Line("warning", "compensation_failed", {
                **wf, "step": event.step, "attempt": event.attempt,
                "error": event.error[:ERROR_SHOWN], "will_retry": event.will_retry})
        case ReplanApplied():
            return Line("info", "replan_applied", {
                **wf, "plan": event.plan_id, "revision": event.revision,
                "assignments": dict(sorted(event.assignments.items())),
                "reason": event.reason[:ERROR_SHOWN]})
        case Deviation():
            return Line("warning", "deviation", {
                **wf, "kind": event.kind, "step": event.step, "executor": event.executor,
                "detail": event.detail[:ERROR_SHOWN]})
        case BudgetExhausted():
            return Line("warning", "budget_exhausted", {
                **wf, "budget_tokens": event.budget_tokens, "used_tokens": event.used_tokens})
        case WorkflowCompleted():
            return Line("info", "workflow_completed", {**wf, "tokens": event.usage.tokens})
        case WorkflowFailed():
            return Line("warning", "workflow_failed", {**wf, "reason": event.reason})
        case WorkflowCompensated():
            if event.failed:
                return Line("warning", "workflow_compensation_failed", {
                    **wf, "failed": list(event.failed)})
            return Line("info", "workflow_compensated", wf)
        case WorkflowCancelled():
            return Line("info", "workflow_cancelled", {**wf, "reason": event.reason})
        case StepHeartbeat() | StepCheckpointed():
            return None
        case _:
            return None


def narrate(log: _Logger, workflow: str, events: Iterable[MoonEvent]) -> None:
    """Log each event worth a line."""
    for event in events:
        line = narration(workflow, event)
        if line is None:
            continue
        if line.level == "warning":
            log.warning(line.event, **line.fields)
        else:
            log.info(line.event, **line.fields)


def joined(url: str, data_dir: str, space: str, role: str) -> dict[str, str]:
    """What a service says at start about where it is: the broker without any credentials in
    its URL, the data dir its keys come from, its stream namespace and broker user."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    broker = f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"
    return {"broker": broker, "data_dir": data_dir, "space": space or "-", "role": role}
