"""Executor reports: signed by the executor, sent to the engine as requests, answered after the
decision they cause is journaled (so the answer is the report's durable acceptance).

A report is a statement of kind REPORT by the executor's own key, on
`moon.report.<executor>.<workflow>.<kind>`, or with `.<engine>` after it to the engine process
that sent the order (a work order names it: the engine whose cache holds the workflow, so two
engines do not each decide on the other's stale state). The engine checks the key against the
registry entry of the executor the subject names, then that the command's kind and workflow
match the subject, then (moon/authority.py) that the attempt is bound to that executor.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from envelope.keys import Signer
from envelope.statement import REPORT, sign_statement
from moon.effects import COMMANDS
from streams import subjects
from streams.moon_events import (
    CheckpointStep,
    CompleteStep,
    FailStep,
    Heartbeat,
    StartStep,
    command_kind,
)
from streams.replies import Reason, Refusal
from streams.subjects import Space

__all__ = [
    "REPORT_KINDS",
    "RETRY_HEADER",
    "Report",
    "ReportReply",
    "parse_report_subject",
    "report_subject",
    "seal_report",
]

Report: TypeAlias = StartStep | Heartbeat | CheckpointStep | CompleteStep | FailStep
REPORT_KINDS = frozenset({"start_step", "heartbeat", "checkpoint_step", "complete_step",
                          "fail_step"})


RETRY_HEADER = "Moon-Retry"  # a report sent again after an unanswered try: re-send effects


class ReportReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """The engine's answer. `run` answers a start: True only to the sender of the start the
    journal holds for the attempt, so an attempt runs at most once. `order` answers a
    completion that offered to take the next order: the signed order, the sender's alone
    (moon/handoff.py)."""

    ok: bool
    run: bool = False
    reason: str = ""
    detail: str = ""
    order: bytes | None = None

    @staticmethod
    def refused(refusal: Refusal) -> ReportReply:
        return ReportReply(ok=False, reason=refusal.reason.value, detail=refusal.detail)


def report_subject(space: Space, executor: str, report: Report, engine: str = "") -> str:
    return space.subject(subjects.report(executor, report.workflow_id, command_kind(report),
                                         engine))


def seal_report(signer: Signer, report: Report) -> bytes:
    return sign_statement(signer, REPORT, COMMANDS.encode(report))


def parse_report_subject(space: Space, subject: str) -> tuple[str, str, str] | Refusal:
    """(executor token, workflow id, kind) of a report subject, addressed to an engine (six
    tokens: which one is routing, not authority) or to any (five)."""
    parts = space.unprefix(subject).split(".")
    if len(parts) not in (5, 6) or parts[:2] != ["moon", "report"] or \
            parts[4] not in REPORT_KINDS:
        return Refusal(Reason.WRONG_SUBJECT, f"not a report subject: {subject[:120]}")
    return parts[2], parts[3], parts[4]
