"""The engine service: commands in, decisions journaled, work orders and timers out.

Order of effects for every command: decide and append (the journal is the truth), then arm
timers, then send orders (beside the workflow-index put), then acknowledge the command. A crash
anywhere before the ack brings the command back; the decider then decides nothing (same command
id) and the engine arms the timers and re-sends the orders of the state it folds, both
deduplicated (same timer command ids, `Nats-Msg-Id` on orders). Several engines may share the
durable consumer: optimistic concurrency on the journal keeps them correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NoStreamResponseError

from moon import journal, workflow
from moon.effects import COMMANDS, Effects, in_flight_orders
from moon.workflow import (
    WorkflowState,
    is_terminal,
    moot_timers,
    pending_timers,
    timers,
    work_orders,
)
from streams import metrics
from streams.audit import AuditRecord, audit_subject
from streams.codec import Undecodable
from streams.config import WORKFLOWS
from streams.decider import Decided
from streams.moon_events import (
    Deviation,
    FireTimer,
    MoonCommand,
    MoonEvent,
    StepCompleted,
    command_kind,
)
from streams.replies import CODES, Reason, Refusal
from streams.subjects import Space

__all__ = ["Engine", "WorkflowSummary", "follow_until_terminal", "now_ms"]

log = structlog.get_logger("moon.engine")
ENGINE_CONSUMER = "moon-engine"


def now_ms() -> int:
    return int(time.time() * 1000)


class WorkflowSummary(msgspec.Struct, frozen=True):
    """The workflow index entry: answers `moon list` without reading the journal."""

    workflow_id: str
    status: str
    steps: int
    completed: int
    version: int
    updated_ms: int
    plan_id: str | None = None
    tokens: int = 0


def summary(state: WorkflowState, version: int, at_ms: int) -> WorkflowSummary:
    done = sum(1 for s in state.steps.values() if s.status == "completed")
    return WorkflowSummary(
        workflow_id=state.workflow_id, status=state.status, steps=len(state.steps),
        completed=done, version=version, updated_ms=at_ms, plan_id=state.plan_id,
        tokens=state.usage.tokens,
    )


@dataclass
class _Held:
    lock: asyncio.Lock
    users: int = 0


@dataclass
class Stats:
    commands: int = 0
    decisions: int = 0
    refusals: int = 0
    duplicates: int = 0
    deviations: int = 0
    orders: int = 0


@dataclass
class Engine:
    nc: Client
    space: Space = field(default_factory=Space)
    concurrency: int = 256
    # Commands a dead engine held come back after this: short, since handling one twice is
    # harmless (it decides nothing the second time).
    ack_wait_s: float = 5.0
    clock_ms: Callable[[], int] = now_ms
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self.js = self.nc.jetstream()
        self.runner = journal.runner(self.js, self.space)
        self.effects = Effects(self.js, self.space)
        self._locks: dict[str, _Held] = {}
        self._slots = asyncio.Semaphore(self.concurrency)
        self._index: Any = None
        self._stopping = asyncio.Event()
        self.consuming = False  # between subscribing and stopping: what `health` reports

    async def _workflows(self) -> Any:
        if self._index is None:
            self._index = await self.js.key_value(self.space.bucket(WORKFLOWS.name))
        return self._index

    # --- the one path every command takes ------------------------------------------------------

    async def submit(
        self, command: MoonCommand, *, redelivered: bool = False
    ) -> Decided[MoonEvent, WorkflowState] | Refusal:
        """Decide, journal, send effects. Safe to call again with the same command: pass
        `redelivered=True` when it may have been handled before (a redelivery, a caller's
        retry), so that a decision journaled by a handling that died before its effects gets
        its timers and orders sent now."""
        kind = command_kind(command)
        with metrics.COMMAND_SECONDS.labels(kind).time():
            outcome = await self._submit(command, redelivered=redelivered)
        match outcome:
            case Refusal():
                metrics.COMMANDS.labels(kind, "refused").inc()
            case _ if outcome.duplicate:
                metrics.COMMANDS.labels(kind, "duplicate").inc()
            case _ if not outcome.events:
                metrics.COMMANDS.labels(kind, "noop").inc()
            case _:
                metrics.COMMANDS.labels(kind, "decided").inc()
                _count_events(outcome.events)
        return outcome

    async def _submit(
        self, command: MoonCommand, *, redelivered: bool
    ) -> Decided[MoonEvent, WorkflowState] | Refusal:
        wf = command.workflow_id
        async with self._lock(wf):
            outcome = await self.runner.handle(wf, command, key=command.command_id)
            if isinstance(outcome, Refusal):
                self.stats.refusals += 1
                return outcome
            state = outcome.state
            if outcome.events and not outcome.duplicate:
                self.stats.decisions += 1
                orders = work_orders(state, outcome.events)
                moot = moot_timers(state, outcome.events)
                # Timers before orders: an order never runs without its timeout armed.
                await self.effects.schedule(timers(state, outcome.events), self.clock_ms())
                self.stats.deviations += sum(isinstance(e, Deviation) for e in outcome.events)
            elif redelivered or outcome.duplicate:
                # The first handling may have journaled but not sent: arm again every timer the
                # state waits on, then re-send what is in flight (both are deduplicated).
                self.stats.duplicates += 1
                await self.effects.schedule(pending_timers(state), self.clock_ms())
                orders = in_flight_orders(state)
                moot = []
            else:
                return outcome
            # The index is a cache of the journal: written beside the orders, not before them,
            # which saves a round trip per command.
            sent, *_ = await asyncio.gather(self.effects.send_orders(orders),
                                            self._index_put(state, outcome.version),
                                            self.effects.cancel(moot))
            self.stats.orders += sent
            return outcome

    @contextlib.asynccontextmanager
    async def _lock(self, workflow_id: str) -> AsyncIterator[None]:
        """One command per workflow at a time in this process; the lock is dropped when no one
        holds or waits for it, so the table does not grow with every workflow ever seen."""
        entry = self._locks.get(workflow_id)
        if entry is None:
            entry = self._locks[workflow_id] = _Held(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[workflow_id]

    async def _index_put(self, state: WorkflowState, version: int) -> None:
        index = await self._workflows()
        entry = summary(state, version, self.clock_ms())
        await index.put(state.workflow_id, msgspec.json.encode(entry))

    # --- the command consumer ------------------------------------------------------------------

    async def _on_command(self, msg: Msg) -> None:
        decoded = COMMANDS.try_decode(msg.data, seq=msg.metadata.sequence.stream,
                                      subject=msg.subject)
        if isinstance(decoded, Undecodable):
            metrics.COMMANDS.labels("unknown", "malformed").inc()
            try:
                await self._audit_bad(msg, decoded)
            except Exception:  # broker blip: the garbage comes back and is audited then
                log.exception("audit_failed", seq=decoded.seq)
                return
            with contextlib.suppress(Exception):
                await msg.term()  # redelivering garbage would never help
            return
        self.stats.commands += 1
        if isinstance(decoded, FireTimer) and decoded.at_ms < (now := self.clock_ms()):
            # A timer handled late (no engine was running when it fired) decides as of now, so
            # a retry it schedules gets a deadline in the future, not one already past.
            decoded = msgspec.structs.replace(decoded, at_ms=now)
        try:
            outcome = await self.submit(decoded, redelivered=msg.metadata.num_delivered > 1)
        except Exception as error:
            if isinstance(error, NoStreamResponseError | nats.errors.TimeoutError | TimeoutError):
                # The journal has no leader (an election, a broker restart): expected, and
                # frequent while it lasts, so one line each rather than a traceback each.
                log.warning("command_deferred", workflow=decoded.workflow_id,
                            command=decoded.command_id, error=type(error).__name__)
            else:
                log.exception("command_failed", workflow=decoded.workflow_id,
                              command=decoded.command_id)
            metrics.COMMANDS.labels(command_kind(decoded), "failed").inc()
            with contextlib.suppress(Exception):  # broker gone: it redelivers anyway
                await msg.nak(delay=1)
            return
        if isinstance(outcome, Refusal):
            try:
                await self._audit_refusal(decoded, outcome, msg.data)
            except Exception:  # not acked: it comes back, is refused again and audited then
                log.exception("audit_failed", workflow=decoded.workflow_id)
                return
        with contextlib.suppress(Exception):
            await msg.ack()

    async def _audit_bad(self, msg: Msg, bad: Undecodable) -> None:
        digest = hashlib.sha256(msg.data).hexdigest()
        record = AuditRecord(
            id=f"moon-cmd-{digest[:32]}", service="moon", method="command", outcome="refused",
            request_hash=bytes.fromhex(digest), caller="", caller_verified=False, capability="",
            traceparent="", at=self.clock_ms(), reason=Reason.MALFORMED,
            code=CODES[Reason.MALFORMED], detail=bad.error[:500],
        )
        await self._publish_audit(record)
        log.warning("command_malformed", seq=bad.seq, subject=bad.subject, error=bad.error)

    async def _audit_refusal(self, command: MoonCommand, refusal: Refusal, raw: bytes) -> None:
        kind = command_kind(command)
        record = AuditRecord(
            id=f"{command.command_id}-refused", service="moon", method=kind, outcome="refused",
            request_hash=hashlib.sha256(raw).digest(), caller="", caller_verified=False,
            capability="", traceparent="", at=self.clock_ms(), reason=refusal.reason,
            code=refusal.code, detail=refusal.detail[:500],
            result_ref=f"moon.wf.{command.workflow_id}",
        )
        await self._publish_audit(record)
        log.info("command_refused", workflow=command.workflow_id, kind=kind,
                 reason=refusal.reason.value, detail=refusal.detail)

    async def _publish_audit(self, record: AuditRecord) -> None:
        subject = self.space.subject(audit_subject(record.service, record.method, record.outcome))
        await self.js.publish(subject, msgspec.json.encode(record),
                              headers={"Nats-Msg-Id": record.id})

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Consume commands until cancelled; every message is handled in its own task."""
        durable = self.space.consumer(ENGINE_CONSUMER)
        async with asyncio.TaskGroup() as tasks:

            async def on_msg(msg: Msg) -> None:
                await self._slots.acquire()
                task = tasks.create_task(self._on_command(msg))
                task.add_done_callback(lambda _: self._slots.release())

            sub = await self.js.subscribe(
                self.space.subject("moon.cmd.>"),
                stream=self.space.stream("MOON_CMD"),
                durable=durable,
                queue=durable,
                cb=on_msg,
                manual_ack=True,
                pending_msgs_limit=100_000,
                config=api.ConsumerConfig(
                    ack_wait=self.ack_wait_s, max_ack_pending=self.concurrency * 4,
                    max_deliver=-1,
                ),
            )
            self.consuming = True
            if ready is not None:
                ready.set()
            try:
                await self._stopping.wait()
            finally:
                self.consuming = False
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    def stop(self) -> None:
        """Graceful: stop taking commands, let the ones in hand finish, then return from run()."""
        self._stopping.set()

    async def state(self, workflow_id: str) -> WorkflowState:
        _, state = await self.runner.load(workflow_id)
        return state

    async def wait_terminal(self, workflow_id: str, timeout_s: float = 60.0) -> WorkflowState:
        """Follow the workflow's journal until it ends; the state is the fold of what was read."""
        return await asyncio.wait_for(follow_until_terminal(self.js, self.space, workflow_id),
                                      timeout_s)


def _count_events(events: Iterable[MoonEvent]) -> None:
    for event in events:
        metrics.EVENTS.labels(type(event).__struct_config__.tag).inc()
        match event:
            case Deviation():
                metrics.DEVIATIONS.labels(event.kind).inc()
            case StepCompleted():
                metrics.STEP_SECONDS.observe(event.usage.wall_ms / 1000)
            case _:
                pass


async def follow_until_terminal(
    js: JetStreamContext, space: Space, workflow_id: str
) -> WorkflowState:
    store = journal.journal(js, space)
    state = workflow.initial
    async for item in store.subscribe(store.layout.filter(workflow_id), from_seq=1):
        if isinstance(item, Undecodable):
            continue
        state = workflow.apply(state, item.value)
        if is_terminal(state):
            return state
    raise AssertionError("a journal subscription does not end")
