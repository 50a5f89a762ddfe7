"""The UI's reads: the journals and the index, caught up incrementally so pages stay fast.

Every read goes through the verified stores surfaces/reads.py opens (`reads.moon`: MOON's
journal as the engines signed it; `reads.plans`: PLANS as the planners did). What is cached is
what was verified: a later request reads only the messages after the version it holds (one
`last_sequence` round trip when nothing changed), so a workflow of thousands of messages is
verified once, not at every page load. The index (`moon_workflows` KV) and AUDIT are read the
same way, from the sequence last seen, instead of one KV get per workflow.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from nats.js.errors import NotFoundError

from moon import replay
from moon.workflow import WorkflowState, initial
from streams.audit import AuditRecord
from streams.config import AUDIT, WORKFLOWS
from streams.jetstream_store import last_sequence, ordered_read
from streams.moon_events import Decision
from streams.plan_events import Foreign, PlanBatch
from streams.store import Loaded, Stored, Unreadable, decode_stored
from surfaces.reads import Reads, as_json

__all__ = ["AuditCache", "IndexCache", "JournalCache", "PlanCache", "Tail"]

T = TypeVar("T")
_record = msgspec.json.Decoder(AuditRecord)
_summary = msgspec.json.Decoder(dict[str, Any])


@dataclass
class Tail(Generic[T]):
    """One aggregate's verified messages up to `version`; `quarantined` names the first one
    that did not verify (nothing after it is folded: the state would be a guess)."""

    version: int = 0
    items: list[tuple[int, int, T]] = field(default_factory=list)  # (seq, time_ms, value)
    quarantined: tuple[int, str] | None = None
    folded: Any = None  # what a cache folds the items into (a WorkflowState for MOON's)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Tails(Generic[T]):
    """A bounded LRU of tails over one store that has `read(aggregate, after=)`."""

    def __init__(self, store: Any, *, size: int = 64) -> None:
        self.store, self.size = store, size
        self._tails: collections.OrderedDict[str, Tail[T]] = collections.OrderedDict()

    async def load(self, aggregate: str, fold: Callable[[Any, list[T]], Any] | None = None
                   ) -> Tail[T]:
        """The tail caught up to the store; `fold` folds the new items into `tail.folded`
        (under the tail's lock, so two requests never fold the same items twice)."""
        tail = self._tails.get(aggregate)
        if tail is None:
            tail = self._tails[aggregate] = Tail()
            while len(self._tails) > self.size:
                self._tails.popitem(last=False)
        self._tails.move_to_end(aggregate)
        async with tail.lock:
            if tail.quarantined is not None:
                return tail
            try:
                loaded = await self.store.read(aggregate, after=tail.version)
            except Unreadable as error:
                tail.quarantined = (error.seq, error.detail)
                verified = getattr(error, "items", [])  # the part before it, still shown
                tail.items.extend((i.seq, i.time_ms, i.value) for i in verified)
                tail.version = max([tail.version, *(i.seq for i in verified)])
                if fold is not None:
                    tail.folded = fold(tail.folded, [i.value for i in verified])
                return tail
            tail.items.extend((i.seq, i.time_ms, i.value) for i in loaded.items)
            tail.version = max(tail.version, loaded.version)
            if fold is not None:
                tail.folded = fold(tail.folded, [i.value for i in loaded.items])
            return tail


class PartlyUnreadable(Unreadable):
    """Unreadable, with the verified messages before the one that is not."""

    def __init__(self, error: Unreadable, items: list[Any]) -> None:
        super().__init__(error.aggregate, error.seq, error.subject, error.detail)
        self.items = items


class _ThreadedJournal:
    """`reads.moon.read` with the signature checks off the event loop: the same codec (each
    message verified as an engine's), run in worker threads for a long read, so a cold page
    of thousands of messages neither stalls the server's other requests nor takes one core
    only (PyNaCl releases the GIL while it verifies)."""

    CHUNK = 256

    def __init__(self, reads: Reads) -> None:
        self.js, self.store = reads.js, reads.moon

    async def read(self, aggregate: str, *, after: int = 0) -> Loaded[Decision]:
        layout = self.store.layout
        wanted = layout.filter(aggregate)
        last = await last_sequence(self.js, layout.stream, wanted)
        if last <= after:
            return Loaded(version=after, items=[])
        rows = await ordered_read(self.js, layout.stream, wanted, after=after, upto=last)
        codec = self.store.codec

        def decode(part: list[tuple[int, str, int, bytes]]
                   ) -> tuple[list[Stored[Decision]], Unreadable | None]:
            out = []
            for row in part:
                try:
                    out.append(decode_stored(codec, aggregate, row))
                except Unreadable as error:
                    return out, error
            return out, None

        if len(rows) <= self.CHUNK:
            parts = [decode(rows)]
        else:
            half = -(-len(rows) // 2)
            parts = await asyncio.gather(*(asyncio.to_thread(decode, rows[k:k + half])
                                           for k in range(0, len(rows), half)))
        items: list[Stored[Decision]] = []
        for part, error in parts:  # up to the first message that does not verify
            items.extend(part)
            if error is not None:
                raise PartlyUnreadable(error, items)
        return Loaded(version=items[-1].seq if items else after, items=items)


class JournalCache:
    """Workflows as the MOON journal says, folded incrementally with the engine's own fold."""

    def __init__(self, reads: Reads, *, size: int = 64) -> None:
        self._tails: _Tails[Decision] = _Tails(_ThreadedJournal(reads), size=size)

    async def load(self, workflow_id: str) -> tuple[Tail[Decision], WorkflowState]:
        def fold(state: WorkflowState | None, new: list[Decision]) -> WorkflowState:
            return replay.fold(new, state if state is not None else initial)

        tail = await self._tails.load(workflow_id, fold)
        return tail, tail.folded if tail.folded is not None else initial


class PlanCache:
    """Plans as the PLANS journal says, each message verified as MAESTRO's (or Foreign)."""

    def __init__(self, reads: Reads, *, size: int = 64) -> None:
        self._tails: _Tails[PlanBatch | Foreign] = _Tails(reads.plans, size=size)

    async def load(self, plan_id: str) -> Tail[PlanBatch | Foreign]:
        return await self._tails.load(plan_id)


class _Catchup:
    """A stream read forward from the last sequence seen, one round trip when nothing is new."""

    def __init__(self, reads: Reads, stream: str, subject: str) -> None:
        self.js, self.stream, self.subject = reads.js, stream, subject
        self.cursor = 0
        self._lock = asyncio.Lock()

    async def catch_up(self, *, window: int | None = None) -> list[tuple[int, str, int, bytes]]:
        async with self._lock:
            try:
                last = await last_sequence(self.js, self.stream, self.subject)
            except NotFoundError:
                return []
            if last <= self.cursor:
                return []
            after = self.cursor if window is None or self.cursor else max(0, last - window)
            rows = await ordered_read(self.js, self.stream, self.subject, after=after,
                                      upto=last)
            self.cursor = last
            return rows


class IndexCache:
    """The workflow index (`moon_workflows` KV) in memory, kept by reading its stream forward:
    10,000 workflows cost one read at the first request, not 10,000 KV gets at every one."""

    def __init__(self, reads: Reads) -> None:
        bucket = reads.space.bucket(WORKFLOWS.name)
        self._prefix = f"$KV.{bucket}."
        self._read = _Catchup(reads, f"KV_{bucket}", f"{self._prefix}>")
        self.rows: dict[str, dict[str, Any]] = {}

    @property
    def cursor(self) -> int:
        return self._read.cursor

    @property
    def stream(self) -> str:
        return self._read.stream

    @property
    def subject(self) -> str:
        return self._read.subject

    async def refresh(self) -> dict[str, dict[str, Any]]:
        for _, subject, _, data in await self._read.catch_up():
            key = subject.removeprefix(self._prefix)
            if not data:  # a delete or purge marker
                self.rows.pop(key, None)
                continue
            try:
                row = _summary.decode(data)
            except msgspec.DecodeError:
                continue  # not an index entry: the list shows what it can read
            if isinstance(row.get("workflow_id"), str):
                self.rows[key] = row
        return self.rows


class AuditCache:
    """The recent AUDIT records by id (the request id), to show a workflow's own records."""

    def __init__(self, reads: Reads, *, window: int = 50_000) -> None:
        self._read = _Catchup(reads, reads.space.stream(AUDIT.name),
                              reads.space.subject("audit.>"))
        self.window = window
        self._by_id: dict[str, list[dict[str, Any]]] = {}
        self._order: collections.deque[str] = collections.deque()

    async def records(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        for seq, _, _, data in await self._read.catch_up(window=self.window):
            try:
                record = _record.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            self._by_id.setdefault(record.id, []).append(
                as_json(record) | {"ref": record.ref, "seq": seq})
            self._order.append(record.id)
            if len(self._order) > self.window:  # the oldest record leaves the window
                oldest = self._order.popleft()
                kept = self._by_id.get(oldest, [])
                del kept[:1]
                if not kept:
                    self._by_id.pop(oldest, None)
        found = [r for i in set(ids) for r in self._by_id.get(i, ())]
        return sorted(found, key=lambda r: r["seq"])
