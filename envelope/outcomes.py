"""The gate's outcome store: one KV entry per request id, a claim while the handler runs, then the
sealed first answer, so a retry (on any replica) gets that answer instead of a second run. A
route whose handler is idempotent by the request id skips the claim: its first answer is
stored with one `create` (`keep`)."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from streams.replies import Reason, Refusal

__all__ = ["OUTCOMES_BUCKET", "Outcomes", "Stored"]

OUTCOMES_BUCKET = "envelope_outcomes"


class Stored(msgspec.Struct, frozen=True):
    """KV value under the request id: a claim while running, then the sealed first answer."""

    caller: str
    done: bool
    since_ms: int
    response: bytes = b""


_stored = msgspec.msgpack.Decoder(Stored)
_encode = msgspec.msgpack.encode


def _decode(value: bytes | None) -> Stored | None:
    try:
        return _stored.decode(value or b"")
    except msgspec.DecodeError:  # not written by a gate: never trusted as an outcome
        return None


class Outcomes:
    """Adapter over the KV bucket; request ids are valid KV keys by the time they get here."""

    def __init__(self, kv: Any, *, lease_ms: int) -> None:
        self._kv = kv
        self._lease_ms = lease_ms

    async def claim(self, request_id: str, caller: str, now: int) -> bytes | Refusal | None:
        """Claim the request id; None means run the handler. Otherwise the first outcome stored
        (bytes) or a refusal of this attempt."""
        pending = _encode(Stored(caller, False, now))
        try:
            await self._kv.create(request_id, pending)
            return None
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self._kv.get(request_id)
        except KeyNotFoundError:  # expired or deleted between the two calls: a fresh claim
            return await self.claim(request_id, caller, now)
        stored = _decode(entry.value)
        if stored is None:
            return Refusal(Reason.REPLAYED, "request id holds an outcome the gate cannot read")
        if stored.caller != caller:
            return Refusal(Reason.REPLAYED, "request id already used by another caller")
        if stored.done:
            return stored.response
        in_progress = Refusal(Reason.REPLAYED, "request in progress", retryable=True,
                              retry_after_ms=250)
        if now - stored.since_ms < self._lease_ms:
            return in_progress
        try:  # the earlier claimant died mid-request; take over its claim
            await self._kv.update(request_id, pending, last=entry.revision)
        except KeyWrongLastSequenceError:
            return in_progress
        return None

    async def keep(self, request_id: str, caller: str, now: int,
                   response: bytes) -> bytes | Refusal | None:
        """Store the first answer of a request whose handler is safe to run again (it decides
        by the request id, so a second run decides nothing): one write instead of a claim and
        an answer. None: this answer is the first. Otherwise the first one (bytes), or a
        refusal when the id is another caller's."""
        try:
            await self._kv.create(request_id, _encode(Stored(caller, True, now, response)))
            return None
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self._kv.get(request_id)
        except KeyNotFoundError:  # expired or deleted between the two calls
            return await self.keep(request_id, caller, now, response)
        stored = _decode(entry.value)
        if stored is None:
            return Refusal(Reason.REPLAYED, "request id holds an outcome the gate cannot read")
        if stored.caller != caller:
            return Refusal(Reason.REPLAYED, "request id already used by another caller")
        if not stored.done:
            return Refusal(Reason.REPLAYED, "request in progress", retryable=True,
                           retry_after_ms=250)
        return stored.response

    async def stored(self, request_id: str, caller: str) -> bytes | None:
        """The first answer to this caller's request id, if one was stored."""
        try:
            entry = await self._kv.get(request_id)
        except KeyNotFoundError:
            return None
        stored = _decode(entry.value)
        return stored.response if stored and stored.done and stored.caller == caller else None

    async def finish(self, request_id: str, caller: str, now: int, response: bytes) -> None:
        await self._kv.put(request_id, _encode(Stored(caller, True, now, response)))

    async def release(self, request_id: str) -> None:
        """Not a final answer (the handler failed): a retry runs the handler again."""
        await self._kv.delete(request_id)

    async def settle(self, request_id: str, caller: str, now: int, response: bytes) -> None:
        """A final refusal before any claim: stored unless the id already holds an outcome."""
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._kv.create(request_id, _encode(Stored(caller, True, now, response)))
