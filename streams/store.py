"""The event-store port, its result values, and the in-memory twin.

One stored message = one decision (a batch of events plus the command that caused it), so an
append is atomic and an aggregate's version is the stream sequence of its last message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import msgspec

from streams.codec import Codec, Undecodable
from streams.replies import Conflict

__all__ = [
    "Appended",
    "EventStore",
    "Layout",
    "Loaded",
    "MemoryStore",
    "Stored",
    "Unreadable",
    "subject_matches",
]

T = TypeVar("T")


class Stored(msgspec.Struct, Generic[T], frozen=True):
    seq: int
    subject: str
    time_ms: int
    value: T


class Unreadable(Exception):
    """An aggregate's journal holds a message this reader cannot decode or verify: the
    aggregate cannot be folded past it. Names where it is, so it can be quarantined."""

    def __init__(self, aggregate: str, seq: int, subject: str, detail: str) -> None:
        super().__init__(f"{aggregate}: journal seq {seq} on {subject}: {detail}")
        self.aggregate, self.seq, self.subject, self.detail = aggregate, seq, subject, detail


def decode_stored(codec: Codec[T], aggregate: str, row: tuple[int, str, int, bytes]
                  ) -> Stored[T]:
    """A journal row of `aggregate` decoded, or Unreadable: a reader never skips a message
    it cannot read, since the state after it would be a guess."""
    seq, subject, time_ms, data = row
    decoded = codec.try_decode(data, seq=seq, subject=subject)
    if isinstance(decoded, Undecodable):
        raise Unreadable(aggregate, seq, subject, decoded.error)
    return Stored(seq=seq, subject=subject, time_ms=time_ms, value=decoded)


class Appended(msgspec.Struct, frozen=True):
    """Where the decision landed; `duplicate` means an earlier call with the same key won."""

    seq: int
    duplicate: bool = False


class Loaded(msgspec.Struct, Generic[T], frozen=True):
    version: int
    items: list[Stored[T]]


@dataclass(frozen=True)
class Layout:
    """How aggregates map to subjects: `subject(agg, kind)` to write, `filter(agg)` to read."""

    stream: str
    subject: Callable[[str, str], str]
    filter: Callable[[str], str]


class EventStore(Protocol[T]):
    async def read(self, aggregate: str, *, after: int = 0, upto: int | None = None) -> Loaded[T]:
        """Decisions of `aggregate` with after < seq <= upto, and the version they reach."""
        ...

    async def append(
        self, aggregate: str, value: T, *, expected: int, key: str, kind: str
    ) -> Appended | Conflict:
        """Append if `aggregate` is still at `expected`; `key` names the write (the command id)."""
        ...

    def subscribe(
        self, filter_: str, *, from_seq: int | None = None, from_time_ms: int | None = None
    ) -> AsyncIterator[Stored[T] | Undecodable]:
        """Every later message matching `filter_`, once, in order; undecodable ones reported."""
        ...


def subject_matches(filter_: str, subject: str) -> bool:
    """NATS wildcard matching: `*` one token, `>` one or more trailing tokens."""
    want, have = filter_.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


@dataclass
class MemoryStore(Generic[T]):
    """The twin every unit test uses: same semantics as JetStream (global sequence, OCC, dedupe)."""

    layout: Layout
    codec: Codec[T]
    clock_ms: Callable[[], int] = lambda: 0
    _log: list[tuple[int, str, int, bytes]] = field(default_factory=list)
    _keys: dict[str, int] = field(default_factory=dict)
    _changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _version(self, aggregate: str) -> int:
        wanted = self.layout.filter(aggregate)
        return max((s for s, subj, _, _ in self._log if subject_matches(wanted, subj)), default=0)

    async def read(self, aggregate: str, *, after: int = 0, upto: int | None = None) -> Loaded[T]:
        wanted = self.layout.filter(aggregate)
        items = [
            decode_stored(self.codec, aggregate, (s, subj, t, data))
            for s, subj, t, data in self._log
            if s > after and (upto is None or s <= upto) and subject_matches(wanted, subj)
        ]
        return Loaded(version=items[-1].seq if items else after, items=items)

    async def append(
        self, aggregate: str, value: T, *, expected: int, key: str, kind: str
    ) -> Appended | Conflict:
        # Dedupe before the sequence check, as the server does (research/aesthetics.md §3.5).
        if key in self._keys:
            return Appended(seq=self._keys[key], duplicate=True)
        actual = self._version(aggregate)
        if actual != expected:
            return Conflict(actual=actual)
        seq = len(self._log) + 1
        self._log.append(
            (seq, self.layout.subject(aggregate, kind), self.clock_ms(), self.codec.encode(value))
        )
        self._keys[key] = seq
        async with self._condition():
            self._condition().notify_all()
        return Appended(seq=seq)

    def put_raw(self, subject: str, data: bytes) -> int:
        """Store bytes as they are: lets tests plant garbage the way a broken writer would."""
        seq = len(self._log) + 1
        self._log.append((seq, subject, self.clock_ms(), data))
        return seq

    async def _wait_beyond(self, position: int) -> None:
        async with self._condition():
            await self._condition().wait_for(lambda: len(self._log) > position)

    async def subscribe(
        self, filter_: str, *, from_seq: int | None = None, from_time_ms: int | None = None
    ) -> AsyncIterator[Stored[T] | Undecodable]:
        position = (from_seq or 1) - 1
        while True:
            for s, subj, t, data in self._log[position:]:
                position = s
                if not subject_matches(filter_, subj):
                    continue
                if from_time_ms is not None and t < from_time_ms:
                    continue
                decoded = self.codec.try_decode(data, seq=s, subject=subj)
                if isinstance(decoded, Undecodable):
                    yield decoded
                else:
                    yield Stored(seq=s, subject=subj, time_ms=t, value=decoded)
            await self._wait_beyond(position)
