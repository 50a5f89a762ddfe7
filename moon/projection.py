"""Young workflows: the wake-up that a workflow ending soon never needs.

A workflow this engine dispatched is *young* for YOUNG_MS. Its decisions arm no wake-up (the
one durable schedule per workflow that fires its timers), unless a timer falls due sooner than a
takeover could happen (young + stale + three mark periods: 14 s by default; a step's default
timeout is 60 s). When it stops being young, the engine arms its wake-up once, from the journal,
if it still waits on a timer. Most workflows end young: no schedule and no purge, where each
used to write one schedule and purge it at its end (a 3-step chain: 16 -> 15 writes, and the
purge's API call).

What a crash loses (the wake-ups of young workflows) is found again from the journal. Every
engine keeps a *mark* in KV (`moon_marks`, one key per engine process): the journal sequence
before which everything it dispatched has been projected, refreshed every MARK_EVERY_MS. A mark
not refreshed for STALE_MS is a dead engine's: any engine arms the wake-ups of every workflow
dispatched since it (the journal's `dispatched` subjects), then drops it. Arming twice is
harmless: a schedule replaces its predecessor, and a firing with nothing due decides nothing.
The mark also stays below every dispatch answered before its audit record was stored
(envelope/later.py): the engine taking a mark over writes those records again from the journal,
which holds their evidence (a duplicate, dropped, where the first write made it).

A young workflow's index entry (what `moon list` shows) is held back INDEX_MS as well: one that
ends by then writes only its final entry (a 3-step chain: 11 -> 10 writes), one still running
is listed then. A held entry put late never overwrites a newer one (another engine's decision,
a quarantine): it is compared by journal version and set only over an older one. Per-workflow
reads (the surfaces' summary) read the journal of a workflow the index does not list yet.

`Young` is the pure bookkeeping (the clock passed in); `Marks` is the adapter over the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NotFoundError,
)

from moon.index import WorkflowSummary, summary
from moon.journal import SignedDecisions
from moon.outbox import wake_at
from streams import subjects
from streams.codec import Undecodable
from streams.config import MARKS, MOON
from streams.jetstream_store import last_sequence, ordered_read
from streams.moon_events import (
    Dispatch,
    WorkflowCancelled,
    WorkflowCompensated,
    WorkflowCompleted,
    WorkflowFailed,
)
from streams.store import Unreadable
from streams.subjects import Space

if TYPE_CHECKING:
    from moon.engine import Engine

__all__ = ["INDEX_MS", "MARK_EVERY_MS", "STALE_MS", "YOUNG_MS", "Mark", "Marks", "Projector",
           "Young"]

log = structlog.get_logger("moon.projection")
_ENDS = (WorkflowCompleted, WorkflowFailed, WorkflowCancelled, WorkflowCompensated)

YOUNG_MS = 1_000  # W2's 3-step chain takes ~15 ms, W3's ~100 ms under load
# A dispatch's index entry waits this long: `moon list` may miss a workflow for as long (as a
# Temporal visibility store lags), a CLI's own start-up takes longer, and `moon status` reads
# the journal.
INDEX_MS = 100
MARK_EVERY_MS = 1_000
STALE_MS = 10_000  # ten missed refreshes: the engine is dead (or stalled, and projecting twice
# is harmless)


class Mark(msgspec.Struct, frozen=True):
    seq: int  # every workflow its engine dispatched at a journal sequence below this is projected
    at_ms: int  # when it was refreshed, by the broker's clock


@dataclass
class _Entry:
    due_ms: int
    seq: int
    armed_ms: int | None = None  # the wake-up armed while young (a timer due soon), if any
    # What `moon list` should show of it and has not been put yet: a young workflow's index
    # entry waits INDEX_MS, so one that ends by then writes only its final entry.
    unlisted: WorkflowSummary | None = None


@dataclass
class Young:
    """The workflows this engine dispatched and has not projected yet, oldest first."""

    young_ms: int = YOUNG_MS
    index_ms: int = INDEX_MS
    entries: dict[str, _Entry] = field(default_factory=dict)
    listing_due: dict[str, int] = field(default_factory=dict)  # in due order, as `entries`

    def add(self, workflow_id: str, seq: int, now_ms: int) -> None:
        self.entries.setdefault(workflow_id, _Entry(now_ms + self.young_ms, seq))

    def defer_listing(self, workflow_id: str, summary: WorkflowSummary, now_ms: int) -> None:
        """Hold the workflow's index entry back until INDEX_MS after its dispatch (the first
        held summary sets when; a later one replaces it)."""
        if (entry := self.entries.get(workflow_id)) is None:
            return
        if entry.unlisted is None:
            self.listing_due.setdefault(workflow_id, now_ms + self.index_ms)
        entry.unlisted = summary

    def take_listing(self, workflow_id: str) -> WorkflowSummary | None:
        """The held index entry, now to be put (or superseded by one put at once)."""
        self.listing_due.pop(workflow_id, None)
        entry = self.entries.get(workflow_id)
        if entry is None or entry.unlisted is None:
            return None
        summary, entry.unlisted = entry.unlisted, None
        return summary

    def next_listing(self) -> int | None:
        """When the first held index entry is due."""
        return next(iter(self.listing_due.values()), None)

    def listings_due(self, now_ms: int, *, limit: int = 256) -> list[str]:
        out: list[str] = []
        for workflow_id, due_ms in self.listing_due.items():
            if due_ms > now_ms or len(out) >= limit:
                break
            out.append(workflow_id)
        return out

    def __contains__(self, workflow_id: object) -> bool:
        return workflow_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def armed(self, workflow_id: str) -> int | None:
        entry = self.entries.get(workflow_id)
        return None if entry is None else entry.armed_ms

    def set_armed(self, workflow_id: str, at_ms: int | None) -> None:
        if (entry := self.entries.get(workflow_id)) is not None:
            entry.armed_ms = at_ms

    def due(self, now_ms: int, *, limit: int = 256) -> list[str]:
        """The oldest workflows due for projection (entries are added in due order)."""
        out: list[str] = []
        for workflow_id, entry in self.entries.items():
            if entry.due_ms > now_ms or len(out) >= limit:
                break
            out.append(workflow_id)
        return out

    def postpone(self, workflow_id: str, now_ms: int) -> None:
        """Try again one young period from now (the broker was away): to the back of the line,
        which keeps it in due order (nobody else is due later than that)."""
        if (entry := self.entries.pop(workflow_id, None)) is not None:
            entry.due_ms = now_ms + self.young_ms
            self.entries[workflow_id] = entry

    def everyone(self) -> list[str]:
        return list(self.entries)

    def drop(self, workflow_id: str) -> None:
        self.entries.pop(workflow_id, None)
        self.listing_due.pop(workflow_id, None)

    def floor(self, default: int) -> int:
        """The mark to publish: the earliest dispatch not yet projected, else `default`."""
        return min((entry.seq for entry in self.entries.values()), default=default)


_mark = msgspec.json.Decoder(Mark)


class Marks:
    """The engines' marks in KV, and the journal's dispatches since a mark."""

    def __init__(self, js: JetStreamContext, space: Space) -> None:
        self._js, self._space = js, space
        self._kv: object | None = None

    async def _bucket(self) -> object:
        if self._kv is None:
            self._kv = await self._js.key_value(self._space.bucket(MARKS.name))
        return self._kv

    async def put(self, instance: str, mark: Mark) -> None:
        kv = await self._bucket()
        await kv.put(instance, msgspec.json.encode(mark))  # type: ignore[attr-defined]

    async def all(self) -> list[tuple[str, Mark | None, int]]:
        """(instance, mark or None when unreadable, revision) for every engine's mark."""
        kv = await self._bucket()
        try:
            keys = await kv.keys()  # type: ignore[attr-defined]
        except NoKeysError:
            return []
        out: list[tuple[str, Mark | None, int]] = []
        for key in keys:
            try:
                entry = await kv.get(key)  # type: ignore[attr-defined]
            except KeyNotFoundError:
                continue
            try:
                out.append((key, _mark.decode(entry.value or b""), entry.revision))
            except msgspec.DecodeError:
                out.append((key, None, entry.revision))
        return out

    async def drop(self, instance: str, revision: int) -> bool:
        """Delete a mark unless it changed since it was read (its engine came back)."""
        kv = await self._bucket()
        try:
            await kv.delete(instance, last=revision)  # type: ignore[attr-defined]
        except KeyWrongLastSequenceError:
            return False
        return True

    async def journal_end(self) -> int:
        """The journal's last sequence (0 when empty)."""
        return await last_sequence(self._js, self._space.stream(MOON.name),
                                   self._space.subject(subjects.workflow_events()))

    async def dispatched_since(self, seq: int) -> list[tuple[int, str, bytes]]:
        """(sequence, workflow, message) of every dispatch at journal sequence `seq` or later,
        in journal order."""
        stream = self._space.stream(MOON.name)
        every = self._space.subject(subjects.workflow_event("*", "dispatched"))
        upto = await last_sequence(self._js, stream, every)
        rows = await ordered_read(self._js, stream, every, after=max(0, seq - 1), upto=upto)
        return [(at, self._space.unprefix(subject).split(".")[2], data)
                for at, subject, _, data in rows]


class Projector:
    """An engine's young workflows: armed when they grow up, its mark kept fresh, dead engines'
    marks taken over. Runs beside the engine, under the same per-workflow lock."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.young = Young(young_ms=engine.young_ms)
        self.marks = Marks(engine.js, engine.space)
        # The engine process's random name: a restarted engine's old mark goes stale and is
        # taken over.
        self.instance = engine.instance
        self.appended = 0  # the last journal sequence this process appended
        # Dispatches answered before their audit record was stored (envelope/later.py): the
        # mark stays below each until it is.
        self.unaudited: set[int] = set()
        self._decisions = SignedDecisions(engine.walls)

    def hold(self, seq: int) -> Callable[[], None]:
        """Keep the mark below the dispatch at `seq` until the returned release is called."""
        self.unaudited.add(seq)
        return lambda: self.unaudited.discard(seq)

    async def start(self) -> None:
        """This engine's mark before its first dispatch: a crash from here on is recoverable."""
        self.appended = max(self.appended, await self.marks.journal_end())
        await self.put_mark(self.engine.clock())

    async def project(self, wf: str) -> None:
        """A workflow's wake-up as its journal now stands: when it stops being young here, or
        after the engine it was young at died (what that one armed is not known: armed again;
        its index entry was put with its dispatch, or its dispatch comes back)."""
        async with self.engine.workflow_lock(wf):
            armed = self.young.armed(wf)
            if wf in self.engine.quarantined:
                self.young.drop(wf)
                return
            if armed is None and await self._ended(wf):
                self.young.drop(wf)  # ended (at another engine, say): nothing to wake
                return
            try:
                version, state = await self.engine.runner.load(wf)
            except Unreadable as bad:
                self.young.drop(wf)
                await self.engine.quarantine(bad)
                return
            if version == 0:  # not journaled (yet): nothing to wake
                self.young.drop(wf)
                return
            now = self.engine.clock()
            if armed is not None and armed <= now:
                armed = None  # fired: the next timer needs a wake-up of its own
            effects: list[Awaitable[object]] = []
            if wf not in self.young or self.young.take_listing(wf) is not None:
                # Its index entry was held back (or, at an engine that died, may have been):
                # what the journal says now.
                effects.append(self.engine.put_listing(summary(state, version, now),
                                                       if_newer=True))
            after = wake_at(state)
            if after is not None and (armed is None or after < armed):
                effects.append(self.engine.effects.arm(wf, after, now))
            elif after is None and armed is not None:
                effects.append(self.engine.effects.disarm(wf))
            await asyncio.gather(*effects)
            self.young.drop(wf)

    async def _ended(self, wf: str) -> bool:
        """Did the workflow's last journal message, verified, end it? One direct get, where a
        load would make a consumer to read what another engine appended (and engines sharing
        the work at full speed ran the server out of consumers)."""
        try:
            msg = await self.engine.js.get_last_msg(
                self.engine.space.stream(MOON.name),
                self.engine.space.subject(subjects.workflow_events(wf)), direct=True)
        except NotFoundError:
            return False
        decision = self._decisions.try_decode(msg.data or b"")
        return not isinstance(decision, Undecodable) and any(
            isinstance(event, _ENDS) for event in decision.events)

    async def run(self) -> None:
        """Project young workflows as they come due, refresh this engine's mark, and take over
        the marks of engines that stopped refreshing theirs."""
        next_mark = next_takeover = 0
        while True:
            now = self.engine.clock()
            if due := self.young.due(now):
                results = await asyncio.gather(*(self.project(wf) for wf in due),
                                               return_exceptions=True)
                failed = [(wf, r) for wf, r in zip(due, results, strict=True)
                          if isinstance(r, Exception)]
                for wf, _ in failed:  # stays young: tried again a young period later
                    self.young.postpone(wf, now)
                if failed:  # one line a round, not one per workflow while the broker is away
                    log.warning("projection_deferred", workflows=len(failed),
                                error=type(failed[0][1]).__name__)
            if listings := self.young.listings_due(now):
                results = await asyncio.gather(*(self.list_now(wf) for wf in listings),
                                               return_exceptions=True)
                if errors := [r for r in results if isinstance(r, Exception)]:
                    log.warning("listing_deferred", workflows=len(errors),
                                error=type(errors[0]).__name__)  # tried again soon
            if now >= next_mark:
                with contextlib.suppress(Exception):  # a missed refresh is not yet stale
                    await self.put_mark(now)
                    next_mark = now + MARK_EVERY_MS
            if now >= next_takeover:
                try:
                    await self.take_over(now)
                except Exception as error:  # broker away: checked again next time
                    log.warning("takeover_deferred", error=type(error).__name__)
                next_takeover = now + 2 * MARK_EVERY_MS
            await asyncio.sleep(self._pause(self.engine.clock()))

    def _pause(self, now: int) -> float:
        """Until the next held index entry is due (so `moon list` lags a dispatch by INDEX_MS,
        not a round more), at most 0.1 s; 0.05 s while projections are due."""
        pause = 0.05 if self.young.due(now) else 0.1
        if (listing := self.young.next_listing()) is not None:
            pause = min(pause, max(0.0, (listing - now) / 1000))
        return pause

    async def list_now(self, wf: str) -> None:
        """Put a young workflow's held index entry (it is INDEX_MS old and still running)."""
        async with self.engine.workflow_lock(wf):
            held = self.young.take_listing(wf)
            if held is None or wf in self.engine.quarantined:
                return  # ended meanwhile (its final entry was put with the end), or stopped
            try:
                await self.engine.put_listing(held, if_newer=True)
            except Exception:
                self.young.defer_listing(wf, held, self.engine.clock())
                raise

    async def put_mark(self, now: int) -> None:
        floor = min(self.young.floor(self.appended + 1), min(self.unaudited, default=2**62))
        await self.marks.put(self.instance, Mark(seq=floor, at_ms=now))

    async def take_over(self, now: int) -> None:
        for instance, mark, revision in await self.marks.all():
            fresh = mark is not None and now - mark.at_ms < self.engine.stale_ms
            if instance == self.instance or fresh:
                continue
            since = 1 if mark is None else mark.seq
            dispatches = await self.marks.dispatched_since(since)
            orphans = list(dict.fromkeys(wf for _, wf, _ in dispatches))
            audited = 0
            for start in range(0, len(dispatches), 64):
                audited += sum(await asyncio.gather(*(
                    self._audit_again(seq, data) for seq, _, data in dispatches[start:start + 64])))
            log.warning("engine_mark_taken_over", engine=instance, since=since,
                        workflows=len(orphans), records_written_again=audited)
            for start in range(0, len(orphans), 64):
                await asyncio.gather(*(self.project(wf) for wf in orphans[start:start + 64]))
            await self.marks.drop(instance, revision)

    async def _audit_again(self, seq: int, data: bytes) -> bool:
        """The audit record of a dispatch its engine answered and may have died before storing
        the record of (`hold`): written again from the journal, which holds its evidence; a
        duplicate AUDIT drops when it was stored (within its duplicate window: a takeover
        later than that may write a record twice, never lose one)."""
        if self.engine.audit_again is None:
            return False
        decision = self._decisions.try_decode(data)
        if isinstance(decision, Undecodable):
            return False  # quarantined when its workflow is loaded (project)
        command = decision.command
        if not isinstance(command, Dispatch) or command.audit is None:
            return False
        state = self.engine.runner.apply(self.engine.runner.decider.initial, decision)
        return await self.engine.audit_again(command, seq, state)

    async def flush(self) -> None:
        """Arm what every young workflow waits on now (a graceful stop)."""
        everyone = self.young.everyone()
        for start in range(0, len(everyone), 64):
            await asyncio.gather(*(self.project(wf) for wf in everyone[start:start + 64]))

    async def retire(self) -> None:
        """On a graceful stop: nothing left young, so this engine's mark can go."""
        with contextlib.suppress(Exception):
            await self.flush()
            if not len(self.young) and not self.unaudited:
                for instance, _, revision in await self.marks.all():
                    if instance == self.instance:
                        await self.marks.drop(instance, revision)
