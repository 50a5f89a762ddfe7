"""Limits a gate's replicas share: nonces, treaty rate buckets and budget balances in JetStream KV.

Per-process state would let each replica grant a caller its full allowance, so N replicas meant N
times the treaty rate, N chances to replay a nonce and N budgets. Here every replica reads and
writes the same keys with optimistic concurrency: a nonce is a KV `create` (the first replica
wins); a bucket or a balance is read with its revision and written back with `update(last=...)`,
re-read and re-decided on conflict. The pure steps (`take`, `check_balance`) are the in-memory
ones, so both stores decide alike. `MemoryLimits` keeps the in-process state for tests and
single-process tools.

Buckets (JetStream KV), both in the gate's Space:
- `envelope_nonces` (streams/config.py NONCES): key = sha256(caller||nonce) hex, TTL >= max
  envelope lifetime + 2 * skew (an envelope issued up to `skew` ahead of our clock stays valid
  `max_ttl + skew` after it expires);
- `envelope_limits` (LIMITS below): `rate.<treaty ref hex>` -> Bucket, `ledger.<caller>` -> int.
  No TTL: a rate bucket may hold a zero-rate treaty's lifetime allowance, a balance is money.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Literal, Protocol, assert_never

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from envelope.budget import Budget, Ledger, MemoryLedger, check_balance
from envelope.seal import REPLAYED, NonceCache, Opened, Pending
from envelope.treaty import Bucket, TreatyLimiter, rate_refusal, take
from streams.config import LIMITS, NONCES
from streams.replies import Reason, Refusal
from streams.subjects import Space

__all__ = [
    "LIMITS",
    "KvLimits",
    "Limits",
    "MemoryLimits",
    "Seen",
    "admit_shared",
    "ledger_key",
    "set_balance",
    "spends",
]

ROOT_SPACE = Space()
_CONFLICT_RETRIES = 16  # replicas racing on one key; each retry re-reads, so progress is certain

_bucket = msgspec.msgpack.Decoder(Bucket)
_int = msgspec.msgpack.Decoder(int)
_encode = msgspec.msgpack.encode


class Limits(Protocol):
    """The three stateful checks of an envelope, in the order `admit_shared` runs them."""

    async def start(self, *, keep_ms: int) -> None:
        """Open what the store needs; nonces must be kept at least `keep_ms`."""
        ...

    async def seen(self, key: bytes, keep_until_ms: int, now_ms: int, *,
                   request: bytes = b"") -> Seen:
        """Whether this (caller, nonce) key was seen before, and how; remembered if not. The
        same bytes again (`request`, their hash) are a retry, not a replay: the gate's outcome
        store answers it with the first final answer, or runs it again if the first attempt
        never got one; `"admitted"` when the first attempt took and reserved what it spends
        (`admitted` below), which a retry must not take again."""
        ...

    async def admitted(self, key: bytes, request: bytes) -> None:
        """The request under this nonce key took its rate token and reserved its budget."""
        ...

    async def take(self, key: bytes, *, rate_per_s: float, burst: int, now_ms: int) -> int:
        """A token from the treaty's bucket: 0 if admitted, else ms until one exists."""
        ...

    async def spend(self, caller: str, budget: Budget | None) -> Refusal | None:
        """Check the caller's balance and reserve the budget's tokens, atomically."""
        ...


# "new": never seen; "retry": the same bytes, not (known to be) admitted; "admitted": the same
# bytes, admitted with what they spend; "replay": other bytes under the nonce.
Seen = Literal["new", "retry", "admitted", "replay"]
_ADMITTED = b"\x01"  # after the request hash in its nonce entry: it spent what it spends


def spends(opened: Opened) -> bool:
    """Whether admitting the request takes something a replay must not take again: a treaty's
    rate token or a budget reservation."""
    budget = opened.budget
    return opened.treaty is not None or (budget is not None and bool(budget.tokens))


async def admit_shared(pending: Pending, limits: Limits, now_ms: int, *,
                       answers_replays: bool = False) -> Opened | Refusal:
    """seal.admit, on a Limits store: replay, treaty rate, balance (same order, same answers).

    `answers_replays`: the route keeps each request id's first answer and its handler decides
    by the request id (the gate's idempotent routes). There the nonce protects nothing the
    answer does not: the same bytes again are a retry, never refused as a replay, and get the
    first answer; other bytes under the same nonce can only come from the caller's own key. So
    when nothing is spent either (no treaty rate token, no reservation), no nonce is stored:
    one fsync'd write and one stage less before the handler."""
    budget = pending.opened.budget
    spending = spends(pending.opened)
    if answers_replays and not spending:
        refused = await limits.spend(pending.opened.caller, budget)  # reserves nothing: no read
        return pending.opened if refused is None else pending.refuse(refused)
    seen = limits.seen(pending.nonce_key, pending.keep_until_ms, now_ms,
                       request=pending.opened.request_hash)
    if not spending:
        # Nothing here spends anything a replay must not take (no rate token, no reservation):
        # the balance is read while the nonce is stored, one round trip instead of two. The
        # answers keep their order: a replay is refused as one even when it is also broke.
        replayed, refused = await asyncio.gather(seen, limits.spend(pending.opened.caller,
                                                                    budget))
        if replayed == "replay":
            return pending.refuse(REPLAYED)
        return pending.opened if refused is None else pending.refuse(refused)
    match await seen:
        case "replay":
            return pending.refuse(REPLAYED)
        case "admitted":
            # A retry of bytes that took their token and reserved their budget once: the
            # first attempt's answer (the outcome store's) stands for both, spent once.
            return pending.opened
        case "new" | "retry":
            pass
        case unexpected:
            assert_never(unexpected)
    if pending.treaty is not None and (
        wait_ms := await limits.take(pending.treaty.ref, rate_per_s=pending.treaty.terms.rate_per_s,
                                     burst=pending.treaty.terms.burst, now_ms=now_ms)
    ):
        return pending.refuse(rate_refusal(wait_ms))
    if (refused := await limits.spend(pending.opened.caller, pending.opened.budget)) is not None:
        return pending.refuse(refused)
    # Noted after the reservation, never before: a retry skips only what was surely taken (a
    # crash in between makes the retry spend again: over-charged, never run unreserved).
    await limits.admitted(pending.nonce_key, pending.opened.request_hash)
    return pending.opened


class MemoryLimits:
    """The in-process state of one gate (what every gate had before): not shared by replicas."""

    def __init__(self, *, nonces: NonceCache | None = None, limiter: TreatyLimiter | None = None,
                 ledger: Ledger | None = None) -> None:
        self.nonces = nonces if nonces is not None else NonceCache()
        self.limiter = limiter if limiter is not None else TreatyLimiter()
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()

    async def start(self, *, keep_ms: int) -> None:
        return None

    async def seen(self, key: bytes, keep_until_ms: int, now_ms: int, *,
                   request: bytes = b"") -> Seen:
        # One process, one answer per nonce: the same bytes again are refused as a replay.
        return "replay" if self.nonces(key, keep_until_ms, now_ms) else "new"

    async def admitted(self, key: bytes, request: bytes) -> None:
        return None

    async def take(self, key: bytes, *, rate_per_s: float, burst: int, now_ms: int) -> int:
        return self.limiter.admit(key, rate_per_s=rate_per_s, burst=burst, now_ms=now_ms)

    async def spend(self, caller: str, budget: Budget | None) -> Refusal | None:
        if (refused := check_balance(budget, self.ledger.remaining(caller))) is not None:
            return refused
        if budget is not None and budget.tokens:
            self.ledger.reserve(caller, budget.tokens)
        return None


def ledger_key(caller: str) -> str:
    """KV keys take `[-/_=.A-Za-z0-9]`: a did:key's multibase part fits, anything else is hashed."""
    tail = caller.removeprefix("did:key:")
    if caller.startswith("did:key:") and tail.isascii() and tail.isalnum():
        return f"ledger.{tail}"
    return f"ledger.h{hashlib.sha256(caller.encode()).hexdigest()}"


class KvLimits:
    """Limits in JetStream KV, shared by every gate of a service that uses the same Space."""

    def __init__(self, js: JetStreamContext, *, space: Space = ROOT_SPACE,
                 nonces_bucket: str = NONCES.name, limits_bucket: str = LIMITS.name) -> None:
        self._js = js
        self._names = (space.bucket(nonces_bucket), space.bucket(limits_bucket))
        self._nonces: Any = None
        self._limits: Any = None
        self.conflicts = 0  # lost optimistic updates, re-read and retried (a contention gauge)

    async def start(self, *, keep_ms: int) -> None:
        """Open both buckets; refuse to run on a nonce bucket that forgets too early."""
        self._nonces = await self._js.key_value(self._names[0])
        self._limits = await self._js.key_value(self._names[1])
        ttl_s = (await self._nonces.status()).ttl
        if ttl_s and ttl_s * 1000 < keep_ms:
            raise RuntimeError(
                f"bucket {self._names[0]} keeps nonces {ttl_s:.0f} s, envelopes need {keep_ms} ms"
            )

    async def seen(self, key: bytes, keep_until_ms: int, now_ms: int, *,
                   request: bytes = b"") -> Seen:
        # The bucket's TTL stands in for keep_until_ms (checked >= the longest one in start()).
        try:
            await self._nonces.create(key.hex(), request)
        except KeyWrongLastSequenceError:
            if not request:
                return "replay"
            try:
                entry = await self._nonces.get(key.hex())
            except Exception:  # expired between the two calls: no evidence of a retry
                return "replay"
            if entry.value == request:
                return "retry"
            return "admitted" if entry.value == request + _ADMITTED else "replay"
        return "new"

    async def admitted(self, key: bytes, request: bytes) -> None:
        # A put, not an update: only these bytes' own admission reaches here (a replay is
        # refused before), and the entry keeps the bucket's TTL from now, longer than needed.
        await self._nonces.put(key.hex(), request + _ADMITTED)

    async def take(self, key: bytes, *, rate_per_s: float, burst: int, now_ms: int) -> int:
        name = f"rate.{key.hex()}"
        for _ in range(_CONFLICT_RETRIES):
            bucket, revision = await self._read(name, _bucket)
            if bucket is _UNREADABLE:
                return _CONTENDED_MS  # fail closed: never a fresh full bucket in its place
            after, wait_ms = take(bucket, rate_per_s=rate_per_s, burst=burst, now_ms=now_ms)
            if wait_ms:
                # Not written: a refused take changes nothing a later take would see (below one
                # token, refilling from the old time or from now gives the same count).
                return wait_ms
            if await self._write(name, after, revision):
                return 0
        return _CONTENDED_MS

    async def spend(self, caller: str, budget: Budget | None) -> Refusal | None:
        if budget is None or budget.tokens == 0:
            # Reserves nothing, so no balance can refuse it (an account never holds less than
            # nothing: set_balance): no read. It was a KV round trip before every dispatch.
            return None
        name = ledger_key(caller)
        for _ in range(_CONFLICT_RETRIES):
            left, revision = await self._read(name, _int)
            if left is _UNREADABLE:
                return Refusal(Reason.UNAVAILABLE, f"ledger entry {name} is unreadable")
            if (refused := check_balance(budget, left)) is not None:
                return refused
            if left is None or budget is None or not budget.tokens:
                return None  # unmetered, or nothing to reserve
            if await self._write(name, left - budget.tokens, revision):
                return None
        return Refusal(Reason.UNAVAILABLE, "ledger contended; try again", retryable=True,
                       retry_after_ms=_CONTENDED_MS)

    async def _read(self, name: str, decoder: msgspec.msgpack.Decoder[Any]) -> tuple[Any, int]:
        """(value, revision), or (None, 0) when absent; the revision is what `_write` checks."""
        try:
            entry = await self._limits.get(name)
        except KeyNotFoundError:  # also a deleted or purged key (KeyDeletedError)
            return None, 0
        try:
            return decoder.decode(entry.value or b""), entry.revision
        except msgspec.DecodeError:
            return _UNREADABLE, entry.revision

    async def _write(self, name: str, value: object, revision: int) -> bool:
        try:
            if revision:
                await self._limits.update(name, _encode(value), last=revision)
            else:
                await self._limits.create(name, _encode(value))
        except KeyWrongLastSequenceError:
            self.conflicts += 1
            return False
        return True


_CONTENDED_MS = 50
_UNREADABLE = object()  # a value we never wrote: the check fails closed


async def set_balance(js: JetStreamContext, caller: str, tokens: int, *,
                      space: Space = ROOT_SPACE, bucket: str = LIMITS.name) -> None:
    """Give a caller an account of `tokens` (operators); without one a caller is unmetered.
    Never less than nothing: a request that reserves no tokens is then never refused by a
    balance, which lets the gate admit it without reading the ledger."""
    if tokens < 0:
        raise ValueError(f"a balance is at least 0 tokens, not {tokens}")
    kv = await js.key_value(space.bucket(bucket))
    await kv.put(ledger_key(caller), _encode(tokens))
