"""Reading a subject filter for people and scripts: the engine of `moon tail`.

Rows are decoded with the codec of the stream they live in; a message nobody can decode is
reported with its sequence and skipped, never the end of the reader.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from streams.codec import Codec, Undecodable
from streams.jetstream_store import last_sequence, ordered_read, tail
from streams.subjects import Space

__all__ = ["Row", "TailError", "parse_since", "rows", "to_json_line"]

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class TailError(Exception):
    """A user-facing one-line error: unknown subject, unknown stream, bad option."""


class Row(msgspec.Struct, frozen=True):
    seq: int
    subject: str
    time_ms: int
    event: Any


def parse_since(text: str, now_ms: int) -> int:
    """`10m`, `2h`, `30s`, `500ms`, `1d` before now, as epoch milliseconds."""
    match = _SINCE.match(text.strip())
    if match is None:
        raise TailError(f"--since {text!r}: use a number and a unit, e.g. 30s, 10m, 2h, 1d")
    return now_ms - int(float(match.group(1)) * _UNIT_MS[match.group(2)])


async def find_stream(js: JetStreamContext, filter_: str) -> str:
    try:
        return str(await js.find_stream_name_by_subject(filter_))
    except NotFoundError as error:
        raise TailError(f"no stream holds subjects matching {filter_!r}") from error


def _decode(codecs: Mapping[str, Codec[Any]], base: str, seq: int, subject: str,
            data: bytes) -> Any:
    codec = codecs.get(base)
    if codec is None:
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError as error:
            return Undecodable(seq=seq, subject=subject, error=str(error))
    decoded = codec.try_decode(data, seq=seq, subject=subject)
    return decoded if isinstance(decoded, Undecodable) else msgspec.to_builtins(decoded)


async def rows(
    js: JetStreamContext,
    filter_: str,
    *,
    codecs: Mapping[str, Codec[Any]],
    space: Space | None = None,
    from_seq: int | None = None,
    since_ms: int | None = None,
    last: int | None = None,
    follow: bool = False,
) -> AsyncIterator[Row | Undecodable]:
    """Matching messages in order; without `follow`, those present when the call began."""
    space = space or Space()
    wanted = space.subject(filter_)
    stream = await find_stream(js, wanted)
    base = stream.removeprefix(f"{space.prefix}_") if space.prefix else stream
    end = await last_sequence(js, stream, wanted)

    def row(seq: int, subject: str, time_ms: int, data: bytes) -> Row | Undecodable:
        event = _decode(codecs, base, seq, subject, data)
        if isinstance(event, Undecodable):
            return event
        return Row(seq=seq, subject=space.unprefix(subject), time_ms=time_ms, event=event)

    start_after = (from_seq - 1) if from_seq else 0
    if last is not None:
        window: deque[tuple[int, str, int, bytes]] = deque(maxlen=max(last, 0))
        if end > start_after and last > 0:
            window.extend(await ordered_read(js, stream, wanted, after=start_after, upto=end))
        for r in window:
            yield row(*r)
        start_after = max(start_after, end)
        if not follow:
            return
    elif not follow and since_ms is None:
        if end > start_after:
            for r in await ordered_read(js, stream, wanted, after=start_after, upto=end):
                yield row(*r)
        return
    if not follow and end == 0:
        return
    if not follow and since_ms is not None:
        newest: datetime | None = (await js.get_msg(stream, seq=end, direct=True)).time
        if newest is not None and newest.timestamp() * 1000 < since_ms:
            return  # nothing that recent: do not wait for a message that will not come
    source = tail(
        js, stream, wanted,
        from_seq=start_after + 1 if (start_after or since_ms is None) else None,
        from_time_ms=since_ms if not start_after else None,
    )
    async for seq, subject, time_ms, data in source:
        yield row(seq, subject, time_ms, data)
        if not follow and seq >= end:
            return


def to_json_line(row: Row) -> bytes:
    stamp = datetime.fromtimestamp(row.time_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return msgspec.json.encode(
        {"seq": row.seq, "subject": row.subject, "time": stamp, "event": row.event}
    )
