"""The executor board (MAT): each executor keeps its Offer in the space's BOARD KV bucket under
its own key. The bucket has a TTL, so an executor that stops refreshing (an `Advertiser` re-puts
every ttl/3) drops out: the board is a liveness view, not a registry.

Who says so: an offer is a statement signed by the executor's own key (OFFER), and counts only
when that key is the one the operator-signed registry (`envelope.registry`) holds for the
executor it names. The trust an offer is planned with is the registry's; capabilities the
registry does not let it serve are dropped. Anything else on the board is skipped and logged.

The call for bids lives in maestro/market.py; its names are re-exported here, where callers
have always found them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from envelope.keys import KeyRing, Signer
from envelope.registry import Registration, Registry
from envelope.statement import OFFER, sign_statement
from maestro.goal import Offer
from maestro.market import (
    AWARD,
    AWARD_ACK,
    BID,
    CFP,
    Award,
    AwardAck,
    Bid,
    Bidder,
    CallForBids,
    CfpStep,
    award,
    award_subject,
    awarded_offers,
    call_for_bids,
    cfp_subject,
    open_signed,
    price,
    refresh_offers,
    tender,
)
from streams import subjects
from streams.config import BOARD
from streams.replies import Refusal
from streams.subjects import Space

__all__ = [
    "AWARD",
    "AWARD_ACK",
    "BID",
    "CFP",
    "Advertiser",
    "Award",
    "AwardAck",
    "Bid",
    "Bidder",
    "Board",
    "CallForBids",
    "CfpStep",
    "award",
    "award_subject",
    "awarded_offers",
    "call_for_bids",
    "cfp_subject",
    "open_signed",
    "price",
    "refresh_offers",
    "tender",
]

log = structlog.get_logger("maestro.board")
_encoder = msgspec.json.Encoder()
_offer_decoder = msgspec.json.Decoder(Offer)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _as_registered(offer: Offer, entry: Registration) -> Offer | None:
    """The offer as MAESTRO plans with it: the registry's trust, its capabilities only."""
    served = tuple(c for c in offer.capabilities if entry.serves(c.capability))
    if not served:
        return None
    return msgspec.structs.replace(offer, trust=entry.trust, capabilities=served)


def _board_key(executor: str) -> str:
    return subjects.token(executor)


# --- MAT: the board ------------------------------------------------------------------------


class Board:
    """The live offers of one space, kept in its BOARD bucket (`bucket=` names another one).

    Reading (`live`) needs the `registry` the offers are verified against; publishing needs
    only the executor's key."""

    def __init__(self, js: JetStreamContext, space: Space, *, registry: Registry | None = None,
                 bucket: str | None = None, keys: KeyRing | None = None) -> None:
        self.js = js
        self.space = space
        self.bucket = bucket or space.bucket(BOARD.name)
        self.registry = registry
        self.keys = keys or KeyRing()
        self.rejected: dict[str, str] = {}  # board key -> why its entry was not believed
        self._kv: KeyValue | None = None

    async def _store(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(self.bucket)
        return self._kv

    async def ttl_s(self) -> float | None:
        """The bucket's TTL: how long an offer lives without a refresh (None: forever)."""
        status = await (await self._store()).status()
        ttl = status.ttl
        return float(ttl) if ttl else None

    async def publish(self, offer: Offer, signer: Signer) -> int:
        """Put (or refresh) an offer, signed by its executor's `signer`, under the executor's
        key; returns the KV revision."""
        kv = await self._store()
        signed = sign_statement(signer, OFFER, _encoder.encode(offer))
        revision: int = await kv.put(_board_key(offer.executor), signed)
        return revision

    async def _believe(self, key: str, value: bytes) -> Offer | None:
        assert self.registry is not None
        opened = await open_signed(value, OFFER, _offer_decoder, lambda o: o.executor,
                                   self.registry, keys=self.keys, now_ms=_now_ms())
        why = opened.detail if isinstance(opened, Refusal) else ""
        offer = None
        if not isinstance(opened, Refusal):
            if _board_key(opened[0].executor) != key:
                why = f"an offer for {opened[0].executor!r} under another executor's key"
            elif (offer := _as_registered(*opened)) is None:
                why = "offers no capability its registration lets it serve"
        if offer is None:
            if self.rejected.get(key) != why:
                log.warning("offer_rejected", key=key, why=why)
            self.rejected[key] = why
            return None
        self.rejected.pop(key, None)
        return offer

    async def withdraw(self, executor_id: str) -> None:
        """Take an executor off the board now rather than at TTL expiry."""
        kv = await self._store()
        await kv.delete(_board_key(executor_id))

    async def live(self, timeout_s: float = 5.0) -> tuple[Offer, ...]:
        """Every current offer that verifies, as registered, sorted by executor. An empty bucket
        gives (); an entry that is not a signed offer of its registered executor is skipped
        and named in `rejected` (one broken or forged entry must not blank the board).

        The end of the initial values is the entry with nothing pending after it, not nats-py's
        "init done" marker: that marker can arrive before the first entry when the consumer info
        reply overtakes the deliveries (seen on a loaded machine), which read as an empty board.
        """
        if self.registry is None:
            raise ValueError("a board without a registry cannot tell an offer from a forgery")
        kv = await self._store()
        if (await kv.status()).stream_info.state.messages == 0:
            return ()
        watcher = await kv.watchall()
        entries: dict[str, bytes] = {}
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=timeout_s)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    break  # everything expired between the count and the watch
                if entry is None:
                    continue
                if entry.operation is None and entry.value is not None:
                    entries[entry.key] = entry.value
                else:
                    entries.pop(entry.key, None)  # withdrawn or expired
                if entry.delta == 0:
                    break
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        offers = [o for key, value in entries.items()
                  if (o := await self._believe(key, value)) is not None]
        return tuple(sorted(offers, key=lambda o: o.executor))


class Advertiser:
    """Keeps one offer on the board: publishes it every `interval_s` (default: ttl/3) until
    stopped, then withdraws it. An executor process runs it next to its Worker.

    `offer` may be reassigned while running (new prices, capacity); the next refresh carries it.
    """

    def __init__(
        self,
        board: Board,
        offer: Offer,
        *,
        signer: Signer,
        interval_s: float | None = None,
        withdraw_on_stop: bool = True,
    ) -> None:
        self.board = board
        self.offer = offer
        self.signer = signer  # the executor's own key: it signs every refresh
        self.interval_s = interval_s
        self.withdraw_on_stop = withdraw_on_stop
        self.published = 0
        self._task: asyncio.Task[None] | None = None

    async def _interval(self) -> float:
        if self.interval_s is not None:
            return self.interval_s
        ttl = await self.board.ttl_s()
        return ttl / 3 if ttl else 5.0

    async def run(self) -> None:
        """Refresh forever; cancellation ends it (and withdraws the offer if configured)."""
        interval = await self._interval()
        log.info("advertising", executor=self.offer.executor, interval_s=interval)
        try:
            while True:
                try:
                    await self.board.publish(self.offer, self.signer)
                    self.published += 1
                except (nats.errors.Error, OSError) as error:  # a broker hiccup: try next tick
                    log.warning("advertise failed", executor=self.offer.executor, error=str(error))
                await asyncio.sleep(interval)
        finally:
            if self.withdraw_on_stop:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.board.withdraw(self.offer.executor))
            log.info("advertising stopped", executor=self.offer.executor)

    async def start(self) -> Advertiser:
        """Publish once (so the offer is live when this returns), then refresh in a task."""
        await self.board.publish(self.offer, self.signer)
        self.published += 1
        name = f"advertise:{self.offer.executor}"
        self._task = asyncio.create_task(self._after_first(), name=name)
        return self

    async def _after_first(self) -> None:
        await asyncio.sleep(await self._interval())
        await self.run()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> Advertiser:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
