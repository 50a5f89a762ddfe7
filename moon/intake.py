"""What reaches the engine from outside its process, checked before anything is decided.

Executors' reports come as signed requests on `moon.report.<executor>.<wf>.<kind>`
(moon/reports.py): the registry's key for the executor the subject names must have signed
them, and then the attempt's binding (its claim token) is checked by `authorize`. MOON_CMD
carries timer firings signed by an engine and replans and compensations signed by MAESTRO.
Anything else, or anything whose kind or workflow differs from its subject, is refused with one
audit record and never looped on. What passes goes to `Engine.submit` (or its wake-up).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js.errors import NoStreamResponseError

from envelope.statement import COMMAND, REPORT, TIMER, open_statement
from moon.authority import FromEngine, FromExecutor, FromPlanner, Source
from moon.effects import COMMANDS
from moon.handoff import Handoff
from moon.reports import RETRY_HEADER, ReportReply, parse_report_subject
from moon.state import is_terminal
from streams import metrics
from streams.audit import AuditRecord
from streams.codec import Undecodable
from streams.decider import Contention
from streams.moon_events import (
    CompleteStep,
    ExecutorReport,
    FireTimer,
    MoonCommand,
    StartStep,
    command_kind,
)
from streams.replies import Reason, Refusal

if TYPE_CHECKING:
    from moon.engine import Engine

__all__ = ["TIMER_EARLY_MS", "Intake", "deferred"]

log = structlog.get_logger("moon.engine")  # the engine's lines, wherever in it they are made
TIMER_EARLY_MS = 1_000  # schedules have one-second precision

# MOON_CMD kinds: what each must be signed as, and by whom.
_SIGNED_AS: dict[str, tuple[bytes, str]] = {
    "fire_timer": (TIMER, "engines"),
    "replan": (COMMAND, "planners"),
    "compensate": (COMMAND, "planners"),
}


class Intake:
    """The engine's two subscriptions' handlers: authenticate, then hand over to `engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- executors' reports (request/reply) ---------------------------------------------------

    async def on_report(self, msg: Msg) -> None:
        outcome = await self.report(msg)
        reply = ReportReply.refused(outcome) if isinstance(outcome, Refusal) else outcome
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(msgspec.json.encode(reply))

    async def report(self, msg: Msg) -> ReportReply | Refusal:
        parsed = parse_report_subject(self.engine.space, msg.subject)
        if isinstance(parsed, Refusal):
            return await self.refused("report", parsed, msg.data)
        executor, wf, kind = parsed
        registration = await self.engine.registry.fetch(executor)
        if registration is None or not registration.valid_at(self.engine.clock()):
            return await self.refused(kind, Refusal(
                Reason.UNKNOWN_KEY, f"no registered executor {executor!r}"), msg.data)
        verified = open_statement(msg.data, REPORT, keys=self.engine.walls.keys,
                                  authors={registration.did})
        if isinstance(verified, Refusal):
            return await self.refused(kind, verified, msg.data)
        command = COMMANDS.try_decode(verified.body)
        if isinstance(command, Undecodable):
            return await self.refused(kind, Refusal(Reason.MALFORMED, command.error), msg.data,
                                       caller=verified.author)
        if command_kind(command) != kind or command.workflow_id != wf:
            return await self.refused(kind, Refusal(
                Reason.WRONG_SUBJECT, f"{command_kind(command)} for {command.workflow_id} on "
                                      f"{msg.subject}"), msg.data, caller=verified.author)
        self.engine.stats.commands += 1
        # The engine's clock stamps what happened when: an executor's clock is not trusted
        # to say whether its report was late.
        command = msgspec.structs.replace(command, at_ms=self.engine.clock())
        source = FromExecutor(registration)
        if isinstance(command, ExecutorReport):
            # Who sent it is what its signature says, whatever the body claims.
            command = msgspec.structs.replace(command, executor=registration.executor)
            source = FromExecutor(registration, self.engine.effects.claims.prover(command.claim))
        retry = bool(msg.headers and msg.headers.get(RETRY_HEADER))
        # Only a first try with somewhere to answer: a retry's first handling may have handed
        # the order already (its answer lost), and a second copy could run twice.
        handoff = (Handoff(registration, frozenset(command.take))
                   if isinstance(command, CompleteStep) and command.take and msg.reply
                   and not retry else None)
        try:
            outcome = await self.engine.submit(command, source=source, redelivered=retry,
                                               handoff=handoff)
        except Exception as error:
            deferred(command, error)
            return Refusal(Reason.UNAVAILABLE, type(error).__name__, retryable=True)
        if isinstance(outcome, Refusal):
            return await self.refused(kind, outcome, msg.data, caller=verified.author,
                                       workflow=wf)
        if isinstance(command, StartStep):
            step = outcome.state.steps.get(command.step)
            run = (step is not None and step.attempt == command.attempt
                   and step.start_id == command.command_id and not is_terminal(outcome.state))
            return ReportReply(ok=True, run=run)
        return ReportReply(ok=True, order=None if handoff is None else handoff.order)

    # --- MOON_CMD: timers and MAESTRO's commands ------------------------------------------------

    async def on_command(self, msg: Msg) -> None:
        outcome = await self.command(msg)
        if outcome is None:
            return  # not settled: it comes back
        with contextlib.suppress(Exception):
            await (msg.ack() if outcome else msg.term())

    async def command(self, msg: Msg) -> bool | None:
        """True: handled (ack). False: refused for good (term: redelivering never helps).
        None: leave it unacknowledged, it is redelivered."""
        parts = self.engine.space.unprefix(msg.subject).split(".")
        kind = parts[3] if len(parts) == 4 else ""
        if kind not in _SIGNED_AS:
            refusal = Refusal(Reason.WRONG_SUBJECT, f"MOON_CMD takes no {kind or msg.subject!r}")
            return await self.settle_refused("command", refusal, msg.data)
        statement_kind, who = _SIGNED_AS[kind]
        verified = open_statement(msg.data, statement_kind, keys=self.engine.walls.keys,
                                  authors=getattr(self.engine.walls, who))
        if isinstance(verified, Refusal):
            return await self.settle_refused(kind, verified, msg.data)
        command = COMMANDS.try_decode(verified.body)
        if isinstance(command, Undecodable):
            return await self.settle_refused(kind, Refusal(Reason.MALFORMED, command.error),
                                              msg.data, caller=verified.author)
        if command_kind(command) != kind or command.workflow_id != parts[2]:
            refusal = Refusal(Reason.WRONG_SUBJECT,
                              f"{command_kind(command)} for {command.workflow_id} on {msg.subject}")
            return await self.settle_refused(kind, refusal, msg.data, caller=verified.author)
        self.engine.stats.commands += 1
        now = self.engine.clock()
        source: Source
        if isinstance(command, FireTimer):
            if command.kind == "wake":
                return await self.engine.wake(command, FromEngine(verified.author),
                                        redelivered=msg.metadata.num_delivered > 1)
            if command.at_ms > now + TIMER_EARLY_MS:
                # Fired before it is due by our clock (the broker's, as best we know it): wake
                # the workflow then rather than decide a timeout early.
                await self.engine.effects.arm(command.workflow_id, command.at_ms, now)
                return True
            # Handled late (no engine was running when it fired): decide as of now, so a retry
            # it schedules gets a deadline in the future, not one already past.
            command = msgspec.structs.replace(command, at_ms=max(command.at_ms, now))
            source = FromEngine(verified.author)
        else:
            command = msgspec.structs.replace(command, at_ms=now)
            source = FromPlanner(verified.author)
        try:
            outcome = await self.engine.submit(command, source=source,
                                        redelivered=msg.metadata.num_delivered > 1)
        except Exception as error:
            deferred(command, error)
            with contextlib.suppress(Exception):  # broker gone: it redelivers anyway
                await msg.nak(delay=1)
            return None
        if isinstance(outcome, Refusal):
            return await self.settle_refused(kind, outcome, msg.data, caller=verified.author,
                                              workflow=command.workflow_id)
        return True

    async def settle_refused(self, kind: str, refusal: Refusal, raw: bytes, *,
                             caller: str = "", workflow: str = "") -> bool | None:
        try:
            await self.refused(kind, refusal, raw, caller=caller, workflow=workflow)
        except Exception:  # not settled: it comes back, is refused again and audited then
            log.exception("audit_failed", kind=kind)
            return None
        return False

    async def refused(self, kind: str, refusal: Refusal, raw: bytes, *, caller: str = "",
                      workflow: str = "") -> Refusal:
        """One audit record per refused command, accepted or not as who it claims to be."""
        digest = hashlib.sha256(raw)
        # The same bytes refused for another reason (sent on another subject) are another
        # record: the id, which deduplicates redeliveries, names both.
        record_id = hashlib.sha256(refusal.reason.value.encode() + digest.digest()).hexdigest()
        record = AuditRecord(
            id=f"moon-cmd-{record_id[:40]}", service="moon", method=kind or "command",
            outcome="refused", request_hash=digest.digest(), caller=caller,
            caller_verified=bool(caller), capability="", traceparent="", at=self.engine.clock(),
            reason=refusal.reason, code=refusal.code, detail=refusal.detail[:500],
            result_ref=f"moon.wf.{workflow}" if workflow else "",
        )
        await self.engine.publish_audit(record)
        metrics.labelled(metrics.COMMANDS, kind or "unknown", "refused").inc()
        log.info("command_refused", kind=kind, workflow=workflow or None,
                 reason=refusal.reason.value, detail=refusal.detail[:200])
        return refusal



def deferred(command: MoonCommand, error: Exception) -> None:
    """A command that could not be decided now: it comes back (redelivered or retried)."""
    if isinstance(error, NoStreamResponseError | nats.errors.TimeoutError | TimeoutError
                  | Contention):
        # The journal has no leader (an election, a broker restart), or engines sharing
        # the work raced for one workflow: expected, and frequent while it lasts, so one
        # line each rather than a traceback each; the report or command comes back.
        log.warning("command_deferred", workflow=command.workflow_id,
                    command=command.command_id, error=type(error).__name__)
    else:
        log.exception("command_failed", workflow=command.workflow_id,
                      command=command.command_id)
    metrics.labelled(metrics.COMMANDS, command_kind(command), "failed").inc()

