"""The JetStream adapter of the event-store port: the only journal code that imports nats.

Appends are one `js.publish` per decision with subject-filter OCC and `Nats-Msg-Id` = the
command id (never `publish_async`: a rejected one never resolves, nats-py #985). Reads are
batched direct gets (no consumer); subscriptions use ordered consumers with callbacks (never
`fetch`, #986) and a watchdog (#510).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar, overload

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from streams.codec import Codec, Undecodable
from streams.publish import publish_once
from streams.replies import Conflict
from streams.store import Appended, Layout, Loaded, Stored, decode_stored

__all__ = ["JetStreamStore", "last_sequence", "ordered_read"]

T = TypeVar("T")

WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF
_ACTUAL = re.compile(r"wrong last sequence: (\d+)")
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
MSG_ID = "Nats-Msg-Id"
# A direct get's answer names its message in headers (server stream.go getDirectRequest).
SEQUENCE, SUBJECT, TIME_STAMP, NUM_PENDING = (
    "Nats-Sequence", "Nats-Subject", "Nats-Time-Stamp", "Nats-Num-Pending")
PUBLISH_RETRIES = 3  # ADR-22: no-responders during a leader election is retried, idempotently
STALL_S = 5.0  # an ordered consumer or a batch get that delivers nothing for this long is redone


def _position(msg: Msg) -> tuple[int, int, int]:
    """(stream seq, time ms, pending) of a delivered message, read straight off its ack subject.

    nats-py's `msg.metadata` builds a dataclass and two datetimes per message, a fifth of a
    fold's time; the ack subject is `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.
    <pending>` (9 tokens) or, with domain and account hash, 12 tokens (ADR-15).
    """
    parts = msg.reply.split(".")
    if len(parts) == 9:
        return int(parts[5]), int(parts[7]) // 1_000_000, int(parts[8])
    if len(parts) >= 11:
        return int(parts[7]), int(parts[9]) // 1_000_000, int(parts[10])
    meta = msg.metadata  # an unknown layout: let the client parse it
    stamp: datetime = meta.timestamp
    return meta.sequence.stream, int(stamp.timestamp() * 1000), meta.num_pending


async def last_sequence(js: JetStreamContext, stream: str, filter_: str) -> int:
    """The stream sequence of the last message matching `filter_` (0 when none): one round trip."""
    try:
        msg = await js.get_last_msg(stream, filter_, direct=True)
    except NotFoundError:
        return 0
    return int(msg.seq or 0)


@overload
async def ordered_read(
    js: JetStreamContext, stream: str, filter_: str, *, after: int, upto: int,
    with_ids: Literal[False] = ...,
) -> list[tuple[int, str, int, bytes]]: ...


@overload
async def ordered_read(
    js: JetStreamContext, stream: str, filter_: str, *, after: int, upto: int,
    with_ids: Literal[True],
) -> list[tuple[int, str, int, bytes, str | None]]: ...


async def ordered_read(
    js: JetStreamContext, stream: str, filter_: str, *, after: int, upto: int,
    with_ids: bool = False,
) -> list[Any]:
    """(seq, subject, time_ms, data) with after < seq <= upto, in order, by batched direct gets.

    A batch get (`$JS.API.DIRECT.GET.<stream>` with `next_by_subj` and `batch`, server 2.11+) is
    one request answered by the messages and an end-of-batch status: no consumer is made, so two
    engines re-reading workflows at once never meet the server's consumer limit, and a read costs
    the server no consumer state. The caller knows `upto` exists (it read it as the filter's last
    sequence), so the read ends on reaching it; a batch cut short by the server's byte limit goes
    on from where it stopped, and a replica behind the leader (in a cluster any replica at least
    90 % caught up answers direct gets) is asked again, a few times, before giving up at what a
    message deleted meanwhile leaves.
    """
    out: list[Any] = []
    position, tries = after, 0
    while position < upto:
        got, pending, beyond = await _batch(js, stream, filter_, position, upto, out, with_ids)
        if beyond:
            break  # a message past `upto` came: the server serves in order, so all before it did
        if got > position:
            position, tries = got, 0
            continue
        tries += 1
        if pending == 0 and tries > _SHORT_TRIES:
            break  # nothing more matches, asked enough: the rest was deleted meanwhile
        await asyncio.sleep(min(0.25, 0.01 * tries))  # a lagging replica, an election, a stall
    return out


_SHORT_TRIES = 5
_EOB = "204"
_NOT_FOUND = "404"
_NO_RESPONDERS = "503"


async def _batch(  # noqa: PLR0917 - a private step of ordered_read
    js: JetStreamContext, stream: str, filter_: str, position: int, upto: int,
    out: list[Any], with_ids: bool,
) -> tuple[int, int, bool]:
    """One batch get after `position`: rows up to `upto` appended to `out`; returns the last
    sequence served up to `upto` (`position` when none), how many matching messages the server
    says are left after the last it served, and whether one past `upto` came."""
    nc = js._nc  # the connection the context wraps: one request, many replies
    inbox = nc.new_inbox()
    done = asyncio.Event()
    last, pending, beyond = position, 1, False
    refused: list[str] = []

    async def on_msg(msg: Msg) -> None:
        nonlocal last, pending, beyond
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is not None:
            if status == _EOB:
                pending = int(headers.get(NUM_PENDING) or 0)
            elif status == _NOT_FOUND:
                pending = 0
            elif status == _NO_RESPONDERS:
                pending = 1  # no replica answers yet (an election): ask again
            else:
                refused.append(f"{status} {headers.get('Description', '')}")
            done.set()
            return
        seq = int(headers[SEQUENCE])
        if seq > upto:
            beyond = True
        elif seq > last:
            row = (seq, headers[SUBJECT], _stamp_ms(headers[TIME_STAMP]), msg.data)
            out.append((*row, headers.get(MSG_ID)) if with_ids else row)
            last = seq

    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=1_000_000,
                             pending_bytes_limit=1 << 30)
    try:
        request = {"seq": position + 1, "next_by_subj": filter_, "batch": max(1, upto - position)}
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", msgspec.json.encode(request),
                         reply=inbox)
        try:
            await asyncio.wait_for(done.wait(), STALL_S)
        except TimeoutError:
            return last, 1, False  # lost on the way (a server going down): ask again from here
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    if refused:
        raise APIError(description=f"direct get on {stream}: {refused[0]}")
    return last, pending, beyond


@functools.lru_cache(maxsize=4096)
def _second_ms(whole: str) -> int:
    return int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()) * 1000


def _stamp_ms(stamp: str) -> int:
    """Milliseconds of a direct get's `Nats-Time-Stamp` (Go's RFC 3339 with up to nine digits of
    fraction, trailing zeros trimmed, UTC); whole seconds are parsed once each."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return _second_ms(whole) + int((fraction + "000")[:3])


class JetStreamStore(Generic[T]):
    """The event store on one JetStream stream; versions are stream sequences."""

    def __init__(self, js: JetStreamContext, layout: Layout, codec: Codec[T]) -> None:
        self._js, self.layout, self.codec = js, layout, codec

    async def read(self, aggregate: str, *, after: int = 0, upto: int | None = None) -> Loaded[T]:
        wanted = self.layout.filter(aggregate)
        last = await last_sequence(self._js, self.layout.stream, wanted)
        target = last if upto is None else min(last, upto)
        if target <= after:
            return Loaded(version=after if upto is None else min(after, target or after), items=[])
        rows = await ordered_read(self._js, self.layout.stream, wanted, after=after, upto=target)
        items = [decode_stored(self.codec, aggregate, row) for row in rows]
        return Loaded(version=items[-1].seq if items else after, items=items)

    async def append(
        self, aggregate: str, value: T, *, expected: int, key: str, kind: str
    ) -> Appended | Conflict:
        headers = {
            EXPECTED_LAST_SUBJECT_SEQ: str(expected),
            EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: self.layout.filter(aggregate),
            MSG_ID: key,
        }
        data = self.codec.encode(value)
        subject = self.layout.subject(aggregate, kind)
        for attempt in range(PUBLISH_RETRIES):
            try:
                ack = await publish_once(self._js, subject, data, headers=headers)
            except NoStreamResponseError:
                if attempt == PUBLISH_RETRIES - 1:
                    raise
                await asyncio.sleep(0.25)
                continue
            except APIError as error:
                if error.err_code == WRONG_LAST_SEQUENCE:
                    return await self._conflict_or_duplicate(aggregate, expected, key, error)
                raise
            return Appended(seq=ack.seq, duplicate=bool(ack.duplicate))
        raise AssertionError("unreachable")

    async def _conflict_or_duplicate(
        self, aggregate: str, expected: int, key: str, error: APIError
    ) -> Appended | Conflict:
        """Server 2.15 checks the expected sequence before dedupe, so a re-sent command whose
        first send landed comes back as a conflict: look for our key among the missed writes."""
        found = _ACTUAL.search(error.description or "")
        wanted = self.layout.filter(aggregate)
        actual = int(found.group(1)) if found else await last_sequence(
            self._js, self.layout.stream, wanted
        )
        if actual > expected:
            missed = await ordered_read(
                self._js, self.layout.stream, wanted, after=expected, upto=actual, with_ids=True
            )
            for seq, _, _, _, msg_id in missed:
                if msg_id == key:
                    return Appended(seq=seq, duplicate=True)
        return Conflict(actual=actual)

    async def subscribe(
        self, filter_: str, *, from_seq: int | None = None, from_time_ms: int | None = None
    ) -> AsyncIterator[Stored[T] | Undecodable]:
        async for seq, subject, time_ms, data in tail(
            self._js, self.layout.stream, filter_, from_seq=from_seq, from_time_ms=from_time_ms
        ):
            decoded = self.codec.try_decode(data, seq=seq, subject=subject)
            if isinstance(decoded, Undecodable):
                yield decoded
            else:
                yield Stored(seq=seq, subject=subject, time_ms=time_ms, value=decoded)


async def tail(
    js: JetStreamContext,
    stream: str,
    filter_: str,
    *,
    from_seq: int | None = None,
    from_time_ms: int | None = None,
    new_only: bool = False,
) -> AsyncIterator[tuple[int, str, int, bytes]]:
    """Raw (seq, subject, time_ms, data) from a position on, forever, once each, in order."""
    queue: asyncio.Queue[tuple[int, str, int, bytes]] = asyncio.Queue()
    position = 0

    def config() -> api.ConsumerConfig:
        if position:
            return api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=position + 1
            )
        if from_seq is not None:
            return api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(from_seq, 1)
            )
        if from_time_ms is not None:
            return api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_TIME,
                opt_start_time=datetime.fromtimestamp(from_time_ms / 1000, UTC),  # type: ignore[arg-type]
            )
        if new_only:
            return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
        return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)

    async def on_msg(msg: Msg) -> None:
        seq, time_ms, _ = _position(msg)
        await queue.put((seq, msg.subject, time_ms, msg.data))

    async def subscribe() -> Any:
        return await js.subscribe(
            filter_, stream=stream, ordered_consumer=True, cb=on_msg, config=config(),
            pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30,
        )

    sub = await subscribe()
    try:
        while True:
            try:
                row = await asyncio.wait_for(queue.get(), timeout=STALL_S)
            except TimeoutError:
                # Quiet or stalled? If the stream holds more than we have seen, recreate (#510).
                last = await last_sequence(js, stream, filter_)
                if last > position:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                    sub = await subscribe()
                continue
            if row[0] <= position:
                continue
            position = row[0]
            yield row
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
