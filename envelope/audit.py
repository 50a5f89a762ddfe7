"""Audit publishing: every outcome is one JetStream record; junk is counted, stored sparingly."""

from __future__ import annotations

from collections import Counter

import msgspec
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

from envelope.treaty import Bucket, take
from streams.audit import AuditRecord, audit_subject
from streams.publish import publish_once
from streams.subjects import Space

__all__ = ["AuditLog", "Unreadable"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(AuditRecord).decode


class Unreadable(msgspec.Struct, frozen=True):
    """The record a duplicate Nats-Msg-Id points at could not be read back as one."""

    seq: int
    detail: str


class AuditLog:
    """Appends AuditRecords to the AUDIT stream; deduplicated by Nats-Msg-Id.

    Unauthenticated refusals are counted always but stored through a token bucket: a flood of
    junk must not be able to fill the disk, while every authenticated outcome is always stored.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        space: Space,
        junk_rate_per_s: float = 20.0,
        junk_burst: int = 200,
    ) -> None:
        self._js = js
        self._space = space
        self._stream = space.stream("AUDIT")
        self._junk_rate = junk_rate_per_s
        self._junk_burst = junk_burst
        self._junk_bucket: Bucket | None = None
        self.counts: Counter[str] = Counter()

    async def append(self, record: AuditRecord, *, msg_id: str) -> bool:
        """Publish one record; False when the server already held this Nats-Msg-Id."""
        ack = await self._publish(record, msg_id)
        self.counts[record.outcome] += 1
        return not ack.duplicate

    async def _publish(self, record: AuditRecord, msg_id: str) -> PubAck:
        subject = self._space.subject(audit_subject(record.service, record.method, record.outcome))
        headers = {"Nats-Msg-Id": msg_id}
        if record.traceparent:
            headers["traceparent"] = record.traceparent
        return await publish_once(self._js, subject, _encode(record), headers=headers)

    async def first(self, record: AuditRecord, *, msg_id: str) -> AuditRecord | Unreadable | None:
        """Append a request's final record under `msg_id`: None when it is the first; else the
        first one, which the server names in its answer to a duplicate within the stream's
        duplicate window (streams/config.py), read back by its sequence. One fsync'd write
        keeps both the audit record and the answer it carries."""
        ack = await self._publish(record, msg_id)
        if not ack.duplicate:
            self.counts[record.outcome] += 1
            return None
        try:
            # From the stream's leader, not a direct get: in a cluster any replica answers
            # those, and one that has not applied the first record yet would not have it.
            stored = await self._js.get_msg(self._stream, ack.seq)
            return _decode(stored.data or b"")
        except NotFoundError:  # deleted by an operator since: nothing left to answer from
            return Unreadable(ack.seq, "the first record is gone")
        except msgspec.DecodeError as error:
            return Unreadable(ack.seq, str(error)[:200])

    async def append_unauthenticated(self, record: AuditRecord, *, now_ms: int) -> bool:
        """Count the junk; store it only while the junk bucket has tokens."""
        self.counts["unauthenticated"] += 1
        self._junk_bucket, wait_ms = take(
            self._junk_bucket, rate_per_s=self._junk_rate, burst=self._junk_burst, now_ms=now_ms
        )
        if wait_ms:
            self.counts["unauthenticated_dropped"] += 1
            return False
        return await self.append(record, msg_id=record.id)
