"""The engine service: commands in, decisions journaled, work orders and timers out.

Order of effects for every command: authorize, decide and append (the journal is the truth),
then, all at once, send the orders, arm the workflow's wake-up if its earliest timer moved
earlier, and put its index entry if what `moon list` shows changed; then answer or acknowledge.
A crash anywhere before the answer brings the command back; the decider then decides nothing
(same command id) and the engine arms the wake-up and puts the index entry of the state it folds
(a schedule replaces its predecessor). Orders are sent once, never again: one its handling died
before sending is found by the step's timeout (see `_send_again`). Several engines may share
the work: optimistic concurrency on the journal keeps them correct.

Timers are not messages per step: each workflow has one durable wake-up (a server-side
schedule) at or before its earliest due timer, and the timers themselves are read off the state
(`moon.outbox.pending_timers`) when it fires. A workflow young here (dispatched less than a
second ago) arms it only for a timer due soon; one that still waits when it grows up gets it
then, and the young workflows of an engine that died are taken over from its mark
(moon/projection.py). A 3-step chain that ends within its first second arms none.

Where commands come from, and how each is authenticated before `decide` (moon/authority.py):
- the gate, in process (dispatch, cancel, compensate, checkpoint): the caller's envelope;
- executors, as signed requests on `moon.report.<executor>.<wf>.<kind>` (moon/reports.py): the
  registry's key for the executor the subject names, then the attempt's binding;
- MOON_CMD: timer firings signed by an engine, replans and compensations signed by MAESTRO.
The last two are checked by moon/intake.py; anything else, or anything whose kind or workflow
differs from its subject, is refused with an audit record and never looped on. A workflow whose
journal holds a message that does not verify is quarantined: its status names the sequence, and
every other workflow goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from envelope import later
from envelope.registry import Registry
from moon import index, journal, workflow
from moon.authority import (
    FromEngine,
    Source,
    Walls,
    authorize,
)
from moon.claims import Claims
from moon.clock import BrokerClock
from moon.effects import Effects
from moon.handoff import Handoff, pick
from moon.index import WorkflowSummary
from moon.intake import Intake, deferred
from moon.narration import narrate
from moon.outbox import due_timers, order_keys, pending_timers, wake_at, work_orders
from moon.projection import MARK_EVERY_MS, STALE_MS, YOUNG_MS, Projector
from moon.state import WorkflowState, is_terminal
from moon.tracing import trace_of
from streams import metrics
from streams.audit import AuditRecord, audit_subject
from streams.codec import Undecodable
from streams.config import WORKFLOWS
from streams.decider import Decided
from streams.moon_events import (
    Deviation,
    Dispatch,
    Dispatched,
    FireTimer,
    MoonCommand,
    MoonEvent,
    StepCompleted,
    TimerRequest,
    WorkOrder,
    command_kind,
)
from streams.publish import publish_once
from streams.replies import CODES, Reason, Refusal
from streams.store import Unreadable
from streams.subjects import Space, reports, reports_to

__all__ = ["Engine", "follow_until_terminal"]

log = structlog.get_logger("moon.engine")
_listing = msgspec.json.Decoder(WorkflowSummary)
ENGINE_CONSUMER = "moon-engine"
WAKE_SLACK_MS = 20  # a timer due this soon fires with the wake-up instead of another schedule
WAKE_ROUNDS = 100  # timers a decision makes due at once, fired in the same wake-up
CONSUMER_CHECK_S = 2.0


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
    quarantined: int = 0
    handed_over: int = 0  # effects finished beside the gate's answer (envelope/later.py)
    handed: int = 0  # orders in a completion's answer instead of WORK (moon/handoff.py)


@dataclass
class Engine:
    nc: Client
    walls: Walls
    registry: Registry
    space: Space = field(default_factory=Space)
    concurrency: int = 256
    # Commands a dead engine held come back after this: short, since handling one twice is
    # harmless (it decides nothing the second time).
    ack_wait_s: float = 5.0
    clock_ms: Callable[[], int] | None = None  # default: the broker's clock (moon/clock.py)
    stats: Stats = field(default_factory=Stats)
    young_ms: int = YOUNG_MS  # moon/projection.py: how long a dispatch writes no projection
    stale_ms: int = STALE_MS  # another engine's mark this old is a dead engine's

    def __post_init__(self) -> None:
        if self.walls.signer is None:
            raise ValueError("an engine needs its key: it signs what it journals")
        self.js = self.nc.jetstream()
        self.runner = journal.runner(self.js, self.space, self.walls)
        # This process's name (random: a restart is another process): its mark's key in KV
        # (moon/projection.py) and the address its orders' reports come back to.
        self.instance = secrets.token_hex(8)
        self.effects = Effects(self.js, self.space, self.walls.signer,
                               Claims(self.walls.signer, self.walls.keys, self.walls.engines),
                               instance=self.instance)
        self.broker_clock = BrokerClock(
            self.nc, f"$JS.API.STREAM.INFO.{self.space.stream('MOON_CMD')}")
        self.clock: Callable[[], int] = self.clock_ms or self.broker_clock
        self._locks: dict[str, _Held] = {}
        self._slots = asyncio.Semaphore(self.concurrency)
        self._index: Any = None
        # Workflows dispatched here and not yet projected (moon/projection.py).
        self.projector = Projector(self)
        self.young = self.projector.young
        # A timer due sooner than this is armed at once: a takeover could come too late for it.
        self.arm_now_ms = self.young_ms + self.stale_ms + 3 * MARK_EVERY_MS
        self._stopping = asyncio.Event()
        self.quarantined: dict[str, str] = {}
        self.consuming = False  # commands and reports are being taken: what `health` reports
        self.intake = Intake(self)
        # Writes the audit record of a dispatch whose record a crash may have kept from AUDIT,
        # from the journal (moon/projection.py take_over); set by MOON's gate (moon/gateway.py).
        self.audit_again: Callable[[Dispatch, int, WorkflowState], Awaitable[bool]] | None = None

    async def _workflows(self) -> Any:
        if self._index is None:
            self._index = await self.js.key_value(self.space.bucket(WORKFLOWS.name))
        return self._index

    # --- the one path every command takes ------------------------------------------------------

    async def submit(
        self, command: MoonCommand, *, source: Source, redelivered: bool = False,
        handoff: Handoff | None = None,
    ) -> Decided[MoonEvent, WorkflowState] | Refusal:
        """Authorize, decide, journal, send effects. Safe to call again with the same command:
        pass `redelivered=True` when it may have been handled before (a redelivery, a caller's
        retry), so that a decision journaled by a handling that died before its effects gets
        its wake-up and orders sent now. With `handoff`, an order the decision schedules that
        the reporter may take is signed into it instead of sent to WORK (moon/handoff.py)."""
        wf = command.workflow_id
        if (why := self.quarantined.get(wf)) is not None:
            return Refusal(Reason.QUARANTINED, why)
        if not later.active():
            async with self.workflow_lock(wf):
                return await self._decide(command, source, redelivered=redelivered,
                                          handoff=handoff)
        # Through the gate: the effects finish beside its answer and audit record
        # (envelope/later.py), and the workflow stays locked until they are stored, so its
        # next command is decided after them, as when they were awaited here.
        finishing: list[asyncio.Future[None]] = []
        held = await self._hold(wf)
        try:
            outcome = await self._decide(command, source, redelivered=redelivered,
                                         finishing=finishing, handoff=handoff)
        except BaseException:
            self._let_go(wf, held)
            raise
        if not finishing:
            self._let_go(wf, held)
            return outcome
        finishing[0].add_done_callback(lambda _: self._let_go(wf, held))
        self.stats.handed_over += later.hand_over(finishing[0])
        return outcome

    async def _decide(
        self, command: MoonCommand, source: Source, *, redelivered: bool,
        finishing: list[asyncio.Future[None]] | None = None, handoff: Handoff | None = None,
    ) -> Decided[MoonEvent, WorkflowState] | Refusal:
        """`submit` with the workflow's lock held. With `finishing`, the effects are not
        awaited: the task that sends them is put there."""
        kind = command_kind(command)
        with metrics.labelled(metrics.COMMAND_SECONDS, kind).time():
            outcome = await self._decide_and_send(command, source, redelivered=redelivered,
                                                  finishing=finishing, handoff=handoff)
        match outcome:
            case Refusal():
                metrics.labelled(metrics.COMMANDS, kind, "refused").inc()
            case _ if outcome.duplicate:
                metrics.labelled(metrics.COMMANDS, kind, "duplicate").inc()
            case _ if not outcome.events:
                metrics.labelled(metrics.COMMANDS, kind, "noop").inc()
            case _:
                metrics.labelled(metrics.COMMANDS, kind, "decided").inc()
                _count_events(outcome.events)
        return outcome

    async def _decide_and_send(
        self, command: MoonCommand, source: Source, *, redelivered: bool,
        finishing: list[asyncio.Future[None]] | None = None, handoff: Handoff | None = None,
    ) -> Decided[MoonEvent, WorkflowState] | Refusal:
        wf = command.workflow_id
        try:
            outcome = await self.runner.handle(
                wf, command, key=command.command_id,
                check=lambda c, state: authorize(c, source, state),
            )
        except Unreadable as bad:
            return await self.quarantine(bad)
        if isinstance(outcome, Refusal):
            self.stats.refusals += 1
            return outcome
        state, now = outcome.state, self.clock()
        effects: list[Awaitable[object]] = []
        ended_young = False
        if outcome.events and not outcome.duplicate:
            self.stats.decisions += 1
            # One log line per step transition, with the workflow's trace (as its spans have).
            narrate(log.bind(trace_id=trace_of(state).trace_id), wf, outcome.events)
            self.stats.deviations += sum(isinstance(e, Deviation) for e in outcome.events)
            orders = self._hand_off(work_orders(state, outcome.events), handoff)
            # Synchronously with the append's answer, so a mark never passes a dispatch
            # that is not yet young.
            self.projector.appended = max(self.projector.appended, outcome.version)
            self._audited_later(command, outcome.version)
            if any(isinstance(event, Dispatched) for event in outcome.events):
                self.young.add(wf, outcome.version, now)
            if wf in self.young:
                effects += self._young_effects(wf, state, now)
                ended_young = is_terminal(state)
            else:
                # One wake-up per workflow, armed no later than its earliest timer: re-armed
                # only when that moves earlier (a step's own timeout is later than the one
                # before it, so a chain arms once), dropped when nothing is left to wait for.
                before = None if outcome.prior is None else wake_at(outcome.prior)
                after = wake_at(state)
                if after is not None and (before is None or after < before):
                    effects.append(self.effects.arm(wf, after, now))
                elif after is None and before is not None:
                    effects.append(self.effects.disarm(wf))
            if state.status == "cancelled":
                effects.append(self.effects.withdraw(
                    wf, [] if outcome.prior is None else order_keys(outcome.prior)))
            elif is_terminal(state):
                self.effects.forget(wf)
            if index.changed(outcome.prior, state):
                listing = index.summary(state, outcome.version, now)
                if wf in self.young and not is_terminal(state):
                    # Held back a moment (moon/projection.py INDEX_MS): most workflows end
                    # by then and write only their final entry.
                    self.young.defer_listing(wf, listing, now)
                else:
                    self.young.take_listing(wf)  # this one supersedes a held one
                    effects.append(self.put_listing(listing))
        elif redelivered or outcome.duplicate:
            self.stats.duplicates += 1
            version = (outcome.version if outcome.state_version is None
                       else outcome.state_version)
            await self._send_again(state, version, now)
            return outcome
        else:
            return outcome
        # All at once, none before another: a crash between them leaves the command unanswered
        # (or unacknowledged), and its retry sends all of them again.
        send = self._send(wf, orders, effects, ended_young=ended_young)
        if finishing is None:
            await send
        else:
            finishing.append(asyncio.ensure_future(send))
        return outcome

    def _hand_off(self, orders: list[WorkOrder], handoff: Handoff | None) -> list[WorkOrder]:
        """The orders left for WORK once the reporter took the one it may (moon/handoff.py).
        The decision is journaled already; the answer carrying the order is sent after."""
        if handoff is None or (handed := pick(orders, handoff.registration,
                                              handoff.take)) is None:
            return orders
        handoff.order = self.effects.seal_order(handed)
        self.stats.handed += 1
        return [order for order in orders if order is not handed]

    def _audited_later(self, command: MoonCommand, seq: int) -> None:
        """A dispatch whose append holds its request's audit evidence: the gate may answer now
        and write the record after (envelope/later.py); the mark stays below the append until
        it has."""
        if isinstance(command, Dispatch) and command.audit is not None:
            release = self.projector.hold(seq)
            if not later.journaled(release):
                release()

    async def _send(self, wf: str, orders: list[WorkOrder], effects: list[Awaitable[object]], *,
                    ended_young: bool) -> None:
        sent, _ = await asyncio.gather(self.effects.send_orders(orders), asyncio.gather(*effects))
        self.stats.orders += sent
        if ended_young:  # nothing left to wake it for: no projection to make
            self.young.drop(wf)

    def _young_effects(self, wf: str, state: WorkflowState, now: int) -> list[Awaitable[object]]:
        """A young workflow's decision arms its wake-up only for a timer due before a takeover
        could arm it (its projection arms the rest); ending, it drops what it armed."""
        after, armed = wake_at(state), self.young.armed(wf)
        if armed is not None and armed <= now:
            armed = None  # that wake-up fired (or is firing): nothing is armed any more
        soon = after is not None and after <= now + self.arm_now_ms
        if after is not None and soon and (armed is None or after < armed):
            self.young.set_armed(wf, after)
            return [self.effects.arm(wf, after, now)]
        if after is None and armed is not None:
            self.young.set_armed(wf, None)
            return [self.effects.disarm(wf)]
        return []

    async def _send_again(self, state: WorkflowState, version: int, now: int) -> None:
        """What a handling that died after its append may have left unsent: the wake-up (a
        schedule replaces its predecessor) and the index entry. Not the orders: an order once
        taken is gone from WORK, and after a broker restart its `Nats-Msg-Id` is forgotten
        with it, so a copy sent again would be taken and run again. An order the dead handling
        never sent is found by the step's timeout (the wake-up armed here), which schedules
        the next attempt: the same path as an executor that dies mid-step."""
        self.young.take_listing(state.workflow_id)  # superseded by the entry put here
        effects: list[Awaitable[object]] = [self._index_put(state, version, now)]
        if (after := wake_at(state)) is not None:
            effects.append(self.effects.arm(state.workflow_id, after, now))
        await asyncio.gather(*effects)

    async def quarantine(self, bad: Unreadable) -> Refusal:
        """A journal message that does not decode or verify: the workflow cannot be folded
        past it, so it stops here, visibly, instead of being retried forever."""
        why = f"journal seq {bad.seq} does not verify: {bad.detail[:300]}"
        refusal = Refusal(Reason.QUARANTINED, why, evidence={"seq": str(bad.seq)})
        if bad.aggregate in self.quarantined:
            return refusal
        self.quarantined[bad.aggregate] = why
        self.stats.quarantined += 1
        log.error("workflow_quarantined", workflow=bad.aggregate, seq=bad.seq, detail=bad.detail)
        entry = WorkflowSummary(workflow_id=bad.aggregate, status="quarantined", steps=0,
                                completed=0, version=bad.seq, updated_ms=self.clock(),
                                detail=why)
        with contextlib.suppress(Exception):  # the refusal's audit record names it anyway
            await (await self._workflows()).put(bad.aggregate, msgspec.json.encode(entry))
        await self.publish_audit(AuditRecord(
            id=f"moon-quarantine-{bad.aggregate}-{bad.seq}", service="moon", method="journal",
            outcome="refused", request_hash=b"", caller="", caller_verified=False,
            capability="", traceparent="", at=self.clock(), reason=Reason.QUARANTINED,
            code=CODES[Reason.QUARANTINED], detail=why, result_ref=f"moon.wf.{bad.aggregate}",
        ))
        return refusal

    @contextlib.asynccontextmanager
    async def workflow_lock(self, workflow_id: str) -> AsyncIterator[None]:
        """One command per workflow at a time in this process."""
        held = await self._hold(workflow_id)
        try:
            yield
        finally:
            self._let_go(workflow_id, held)

    async def _hold(self, workflow_id: str) -> _Held:
        entry = self._locks.get(workflow_id)
        if entry is None:
            entry = self._locks[workflow_id] = _Held(asyncio.Lock())
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            self._forget(workflow_id, entry)
            raise
        return entry

    def _let_go(self, workflow_id: str, entry: _Held) -> None:
        entry.lock.release()
        self._forget(workflow_id, entry)

    def _forget(self, workflow_id: str, entry: _Held) -> None:
        """The lock is dropped when no one holds or waits for it, so the table does not grow
        with every workflow ever seen."""
        entry.users -= 1
        if entry.users == 0:
            del self._locks[workflow_id]

    async def _index_put(self, state: WorkflowState, version: int, now: int) -> None:
        await self.put_listing(index.summary(state, version, now))

    async def put_listing(self, listing: WorkflowSummary, *, if_newer: bool = False) -> None:
        """Put a workflow's index entry. `if_newer`: one held back or read from the journal
        earlier (moon/projection.py), which another engine's decision, or a quarantine, may have
        overtaken since: put only over an entry of an older journal version, compare-and-set."""
        bucket = await self._workflows()
        value = msgspec.json.encode(listing)
        if not if_newer:
            await bucket.put(listing.workflow_id, value)
            return
        for _ in range(8):  # each lost race re-reads: someone else put a newer one, or not
            try:
                entry = await bucket.get(listing.workflow_id)
            except NotFoundError:  # also a deleted key
                entry = None
            try:
                if entry is None:
                    await bucket.create(listing.workflow_id, value)
                elif _version(entry.value) < listing.version:
                    await bucket.update(listing.workflow_id, value, last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue

    async def wake(self, wake: FireTimer, source: FromEngine, *,
                    redelivered: bool = False) -> bool | None:
        """A workflow's wake-up: decide every timer of its state that is due, then arm the next
        one (the schedule that fired is spent). A timer the state still waits on after firing
        (it decided nothing) is not armed again here: the next decision arms it. Timers not yet
        due are never fired early (a heartbeat window is often about a second): the schedule,
        rounded up to its second, fires at or after them, and one still ahead is armed again.
        A wake-up handled before (redelivered) may have died after deciding a timer: what
        that decision left unsent is sent again, since the timer is no longer due to say so."""
        wf = wake.workflow_id
        if wf in self.quarantined:
            return True
        try:
            async with self.workflow_lock(wf):
                try:
                    version, state = await self.runner.load(wf)
                except Unreadable as bad:
                    await self.quarantine(bad)
                    return True
                tried: set[str] = set()  # fired once here: not again, not re-armed
                now = self.clock()
                if redelivered:
                    await self._send_again(state, version, now)
                for _ in range(WAKE_ROUNDS):
                    # A decision may make another timer due at once (a retry without backoff).
                    due = [t for t in due_timers(state, now + WAKE_SLACK_MS)
                           if _fire_id(wf, t) not in tried]
                    if not due:
                        break
                    for timer in due:
                        fire = FireTimer(command_id=_fire_id(wf, timer), workflow_id=wf,
                                         at_ms=max(timer.at_ms, now), kind=timer.kind,
                                         step=timer.step, attempt=timer.attempt)
                        tried.add(fire.command_id)
                        self.stats.commands += 1
                        outcome = await self._decide(fire, source, redelivered=False)
                        if not isinstance(outcome, Refusal):
                            state = outcome.state
                    now = self.clock()
                after = min((t.at_ms for t in pending_timers(state)
                             if _fire_id(wf, t) not in tried), default=None)
                if after is not None:
                    await self.effects.arm(wf, after, now)
                self.young.set_armed(wf, after)
        except Exception as error:
            deferred(wake, error)
            return None
        return True

    async def publish_audit(self, record: AuditRecord) -> None:
        subject = self.space.subject(audit_subject(record.service, record.method, record.outcome))
        await publish_once(self.js, subject, msgspec.json.encode(record),
                           headers={"Nats-Msg-Id": record.id})

    # --- running -------------------------------------------------------------------------------

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Take commands and reports until stopped; every message is handled in its own task.
        A consumer someone deleted is noticed and made again (health fails meanwhile)."""
        await self.broker_clock.sync()
        # This engine's mark before its first dispatch: a crash from here on is recoverable.
        await self.projector.start()
        async with asyncio.TaskGroup() as tasks:

            def spawn(
                handle: Callable[[Msg], Coroutine[Any, Any, None]],
            ) -> Callable[[Msg], Awaitable[None]]:
                async def on_msg(msg: Msg) -> None:
                    await self._slots.acquire()
                    task = tasks.create_task(handle(msg))
                    task.add_done_callback(lambda _: self._slots.release())
                return on_msg

            clock = tasks.create_task(self.broker_clock.run())
            projecting = tasks.create_task(self.projector.run())
            keeping = tasks.create_task(self.effects.keeper.run())
            # Reports for any engine in one queue group, and those addressed to this one: the
            # workflows whose orders it sent. A chain stays with the engine that holds it, so
            # two engines do not each decide on a state the other has moved on from.
            reports_sub = await self.nc.subscribe(
                self.space.subject(reports()), queue=self.space.consumer(ENGINE_CONSUMER),
                cb=spawn(self.intake.on_report), pending_msgs_limit=100_000)
            own_sub = await self.nc.subscribe(
                self.space.subject(reports_to(self.instance)), cb=spawn(self.intake.on_report),
                pending_msgs_limit=100_000)
            try:
                first = True
                while not self._stopping.is_set():
                    sub = await self._subscribe_commands(spawn(self.intake.on_command))
                    self.consuming = True
                    if first and ready is not None:
                        ready.set()
                    first = False
                    await self._until_stopped_or_lost()
                    self.consuming = False
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
            finally:
                self.consuming = False
                projecting.cancel()
                keeping.cancel()
                await self.projector.retire()
                clock.cancel()
                for report_sub in (reports_sub, own_sub):
                    with contextlib.suppress(Exception):
                        await report_sub.unsubscribe()

    async def _subscribe_commands(self, cb: Callable[[Msg], Awaitable[None]]) -> Any:
        durable = self.space.consumer(ENGINE_CONSUMER)
        return await self.js.subscribe(
            self.space.subject("moon.cmd.>"),
            stream=self.space.stream("MOON_CMD"),
            durable=durable,
            queue=durable,
            cb=cb,
            manual_ack=True,
            pending_msgs_limit=100_000,
            config=api.ConsumerConfig(
                ack_wait=self.ack_wait_s, max_ack_pending=self.concurrency * 4, max_deliver=-1,
            ),
        )

    async def _until_stopped_or_lost(self) -> None:
        stream, durable = self.space.stream("MOON_CMD"), self.space.consumer(ENGINE_CONSUMER)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), CONSUMER_CHECK_S)
                return
            try:
                await self.js.consumer_info(stream, durable)
            except NotFoundError:
                log.error("consumer_lost", consumer=durable)
                return
            except Exception as error:  # broker away: the client reconnects; check again
                log.debug("consumer_check_failed", error=repr(error))

    def stop(self) -> None:
        """Graceful: stop taking commands, let the ones in hand finish, then return from run()."""
        self._stopping.set()

    async def state(self, workflow_id: str) -> WorkflowState:
        _, state = await self.runner.load(workflow_id)
        return state

    async def wait_terminal(self, workflow_id: str, timeout_s: float = 60.0) -> WorkflowState:
        """Follow the workflow's journal until it ends; the state is the fold of what was read."""
        return await asyncio.wait_for(
            follow_until_terminal(self.js, self.space, self.walls, workflow_id), timeout_s)


def _fire_id(workflow_id: str, timer: TimerRequest) -> str:
    """A timer's firing, named by what it fires and when it was due: a wake-up handled twice
    (two engines, a redelivery) fires it once."""
    return f"timer/{workflow_id}/{timer.name}/{timer.at_ms}"


def _version(value: bytes | None) -> int:
    """The journal version an index entry shows; -1 for one no engine wrote (replaced)."""
    try:
        return _listing.decode(value or b"").version
    except msgspec.DecodeError:
        return -1


def _count_events(events: Iterable[MoonEvent]) -> None:
    for event in events:
        metrics.labelled(metrics.EVENTS, str(type(event).__struct_config__.tag)).inc()
        match event:
            case Deviation():
                metrics.labelled(metrics.DEVIATIONS, event.kind).inc()
            case StepCompleted():
                metrics.STEP_SECONDS.observe(event.usage.wall_ms / 1000)
            case _:
                pass


async def follow_until_terminal(
    js: JetStreamContext, space: Space, walls: Walls, workflow_id: str,
    on_event: Callable[[MoonEvent], object] | None = None,
) -> WorkflowState:
    """Fold the workflow's verified journal as it grows, until it ends; `on_event` sees each
    event as it is folded (a follower's progress lines)."""
    store = journal.journal(js, space, walls)
    state = workflow.initial
    async for item in store.subscribe(store.layout.filter(workflow_id), from_seq=1):
        if isinstance(item, Undecodable):
            raise Unreadable(workflow_id, item.seq, item.subject, item.error)
        state = workflow.apply(state, item.value)
        if on_event is not None:
            for event in item.value.events:
                on_event(event)
        if is_terminal(state):
            return state
    raise AssertionError("a journal subscription does not end")
