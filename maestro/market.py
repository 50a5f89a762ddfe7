"""The call for bids (MARKET, contract net, Smith 1980) over NATS.

MAESTRO publishes a `CallForBids` on `maestro.cfp.<plan>` with a reply inbox and gathers the
`Bid`s that arrive before a timeout (request-many). A `Bidder` next to each executor answers
from its Offer with a pure pricing function (`price`). `refresh_offers` applies the fresh quotes
to the board offers before planning. `award` sends the binding `Award` on
`maestro.award.<executor>`; the bidder acknowledges and the caller journals the acknowledged
Award in PLANS. Bids are self-reported terms; trust, organisation and capacity always come from
the board (maestro/board.py), never from a bid.

Who says so: a bid and an award acknowledgement are each a statement signed by the executor's
own key (BID, AWARD_ACK), and count only when that key is the one the operator-signed registry
(`envelope.registry`) holds for the executor they name (`open_signed`, which the board uses for
offers too). A call for bids and an award are signed by the planner (CFP, AWARD): a Bidder that
names its planners prices, remembers and binds itself to nothing anyone else sent (a forged call
would replace its bid for a plan, and the real award would then be refused). Anything else on
the bus is skipped and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Container, Iterable, Sequence
from typing import TypeVar

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from envelope.keys import KeyRing, Signer
from envelope.registry import Registration, Registry
from envelope.statement import open_statement, sign_statement
from maestro.goal import CapabilityOffer, Goal, Offer
from streams import subjects
from streams.replies import Reason, Refusal
from streams.subjects import Space

__all__ = [
    "AWARD",
    "AWARD_ACK",
    "BID",
    "CFP",
    "Award",
    "AwardAck",
    "Bid",
    "Bidder",
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

log = structlog.get_logger("maestro.market")
# Statement kinds of the market, beside envelope.statement.OFFER (a kind binds one meaning).
BID = b"maestro.bid.v1"  # a bid, by its executor
AWARD_ACK = b"maestro.award_ack.v1"  # an award acknowledgement (or refusal), by its executor
AWARD = b"maestro.award.v1"  # a binding award, by the planner that makes it
CFP = b"maestro.cfp.v1"  # a call for bids, by the planner that tenders

# --- messages ------------------------------------------------------------------------------


class CfpStep(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step put out to tender: its capability and the goal's own estimates."""

    id: str
    capability: str
    duration_ms: int = 0
    tokens: int = 0


class CallForBids(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A task announcement. `deadline_ms` is the plan's deadline (relative, as in Goal);
    `bids_due_ms` is the wall-clock time (epoch ms) after which the caller stops listening."""

    plan: str
    steps: tuple[CfpStep, ...]
    deadline_ms: int | None = None
    bids_due_ms: int | None = None


class Bid(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An executor's terms for the steps of a call it can run, one quote per capability.

    A quote uses the CapabilityOffer pricing (cost = rate + ceil(rate_per_s * duration / 1000)).
    The terms hold until `valid_until_ms` (epoch ms); an Award after that may be declined.
    """

    plan: str
    executor: str
    steps: tuple[str, ...]
    quotes: tuple[CapabilityOffer, ...]
    valid_until_ms: int
    load: int = 0


class Award(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The binding commitment: `executor` runs `steps` of `plan` at `quotes`.

    Sent with empty quotes it means "at your bid price" (or board price when there was no bid);
    the acknowledged Award always carries the quotes the executor bound itself to.
    """

    plan: str
    executor: str
    steps: tuple[str, ...]
    quotes: tuple[CapabilityOffer, ...] = ()
    awarded_ms: int = 0


class AwardAck(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The bidder's answer: the Award as bound, or a refusal saying why not."""

    plan: str
    executor: str
    award: Award | None = None
    refusal: Refusal | None = None


_encoder = msgspec.json.Encoder()
_cfp_decoder = msgspec.json.Decoder(CallForBids)
_bid_decoder = msgspec.json.Decoder(Bid)
_award_decoder = msgspec.json.Decoder(Award)
_ack_decoder = msgspec.json.Decoder(AwardAck)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)
T = TypeVar("T")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _anyone(_: str) -> bool:
    return True  # the author is checked against the registry once the body names the executor


async def open_signed(
    data: bytes, kind: bytes, decoder: msgspec.json.Decoder[T], executor_of: Callable[[T], str],
    registry: Registry, *, keys: KeyRing, now_ms: int,
) -> tuple[T, Registration] | Refusal:
    """A market statement whose signature holds and whose author is the key the registry holds
    for the executor it names (valid now), with that registration."""
    verified = open_statement(data, kind, keys=keys, authors=_anyone)
    if isinstance(verified, Refusal):
        return verified
    try:
        value = decoder.decode(verified.body)
    except _DECODE_ERRORS as error:
        return Refusal(Reason.MALFORMED, f"{kind.decode()}: {error}")
    executor = executor_of(value)
    entry = registry.get(executor) or await registry.fetch(executor)
    if entry is None or entry.executor != executor:
        return Refusal(Reason.UNKNOWN_KEY, f"{executor[:64]!r} is not a registered executor")
    if entry.did != verified.author:
        return Refusal(Reason.FORGED, f"{kind.decode()} for {executor!r} signed by another key")
    if not entry.valid_at(now_ms):
        return Refusal(Reason.EXPIRED, f"the registration of {executor!r} has expired")
    return value, entry


# --- subjects ------------------------------------------------------------------------------


def cfp_subject(plan: str = "*") -> str:
    """`maestro.cfp.<plan>` (unprefixed); `*` is what bidders subscribe to."""
    return f"maestro.cfp.{plan if plan == '*' else subjects.token(plan)}"


def award_subject(executor: str) -> str:
    """`maestro.award.<executor>` (unprefixed): where one executor takes its awards."""
    return f"maestro.award.{subjects.token(executor)}"


# --- MARKET: pricing (pure) ----------------------------------------------------------------


def _surcharged(value: int, factor: float) -> int:
    return math.ceil(value * factor - 1e-9)


def price(
    offer: Offer,
    cfp: CallForBids,
    *,
    load: int = 0,
    now_ms: int,
    valid_for_ms: int = 30_000,
    surge: float = 0.5,
) -> Bid | None:
    """The bid an executor makes for a call, or None when it offers none of its capabilities.

    Rates scale with utilisation: factor = 1 + surge * load / capacity (an idle executor bids
    its board price, a full one `1 + surge` times it). Durations are the offer's own, or the
    largest step estimate for that capability when the offer quotes none.
    """
    terms = {c.capability: c for c in offer.capabilities}
    steps = [s for s in cfp.steps if s.capability in terms]
    if not steps:
        return None
    factor = 1.0 + surge * max(load, 0) / max(offer.capacity, 1)
    quotes: list[CapabilityOffer] = []
    for capability in dict.fromkeys(s.capability for s in steps):
        term = terms[capability]
        duration = term.duration_ms
        if duration is None:
            duration = max(s.duration_ms for s in steps if s.capability == capability)
        quotes.append(
            CapabilityOffer(
                capability=capability,
                duration_ms=duration,
                rate=_surcharged(term.rate, factor),
                rate_per_s=_surcharged(term.rate_per_s, factor),
                tokens_factor=term.tokens_factor,
            )
        )
    return Bid(
        plan=cfp.plan,
        executor=offer.executor,
        steps=tuple(s.id for s in steps),
        quotes=tuple(quotes),
        valid_until_ms=now_ms + valid_for_ms,
        load=load,
    )


def refresh_offers(
    offers: Iterable[Offer],
    bids: Iterable[Bid],
    *,
    require_bid: bool = False,
    now_ms: int | None = None,
) -> tuple[Offer, ...]:
    """Offers with each bidder's quoted capabilities replaced by its bid terms.

    Capabilities a bid does not quote keep their board terms. An executor that did not bid keeps
    its board price, or is dropped with `require_bid`. Bids from executors not on the board are
    ignored (the board is where trust lives); bids expired at `now_ms` count as no bid. When an
    executor bid more than once, the bid valid longest wins.
    """
    latest: dict[str, Bid] = {}
    for bid in bids:
        if now_ms is not None and bid.valid_until_ms < now_ms:
            continue
        held = latest.get(bid.executor)
        if held is None or bid.valid_until_ms >= held.valid_until_ms:
            latest[bid.executor] = bid
    out: list[Offer] = []
    for offer in offers:
        fresh = latest.get(offer.executor)
        if fresh is None:
            if not require_bid:
                out.append(offer)
            continue
        out.append(_with_terms(offer, fresh.quotes))
    return tuple(out)


def awarded_offers(offers: Iterable[Offer], awards: Iterable[Award]) -> tuple[Offer, ...]:
    """Offers with each awarded executor held to the quotes it acknowledged (the bid is binding,
    so a replan prices its steps at those terms, not at whatever the board says now)."""
    bound: dict[str, list[CapabilityOffer]] = {}
    for a in awards:
        bound.setdefault(a.executor, []).extend(a.quotes)
    return tuple(_with_terms(o, bound[o.executor]) if o.executor in bound else o for o in offers)


def _with_terms(offer: Offer, quotes: Iterable[CapabilityOffer]) -> Offer:
    quoted = {q.capability: q for q in quotes}
    capabilities = tuple(quoted.get(c.capability, c) for c in offer.capabilities)
    return msgspec.structs.replace(offer, capabilities=capabilities)


def tender(plan_id: str, goal: Goal) -> CallForBids:
    """The call for bids for every step of a goal, with the goal's own estimates."""
    steps = tuple(
        CfpStep(s.id, s.capability, duration_ms=s.duration_ms, tokens=s.tokens)
        for s in goal.steps
    )
    return CallForBids(plan=plan_id, steps=steps, deadline_ms=goal.deadline_ms)


# --- MARKET: the manager's side ------------------------------------------------------------


async def call_for_bids(
    nc: Client,
    space: Space,
    cfp: CallForBids,
    timeout_s: float,
    *,
    registry: Registry,
    signer: Signer,
    expected: int | None = None,
    keys: KeyRing | None = None,
) -> list[Bid]:
    """Publish `cfp`, signed by the planner's `signer`, on `maestro.cfp.<plan>` and gather the
    bids that arrive within `timeout_s` (or until `expected` executors have bid). One bid per
    executor (its last); a bid counts only when signed by its executor's registered key, for
    this plan, quoting capabilities the registration lets it serve; the others are logged and
    ignored. No bidder gives []."""
    keys = keys or KeyRing()
    if cfp.bids_due_ms is None:
        cfp = msgspec.structs.replace(cfp, bids_due_ms=_now_ms() + int(timeout_s * 1000))
    inbox = nc.new_inbox()
    sub: Subscription = await nc.subscribe(inbox)
    bids: dict[str, Bid] = {}
    try:
        await nc.publish(space.subject(cfp_subject(cfp.plan)),
                         sign_statement(signer, CFP, _encoder.encode(cfp)), reply=inbox)
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while expected is None or len(bids) < expected:
            remaining = until - loop.time()
            if remaining <= 0:
                break
            try:
                msg = await sub.next_msg(timeout=remaining)
            except nats.errors.TimeoutError:
                break
            opened = await open_signed(msg.data, BID, _bid_decoder, lambda b: b.executor,
                                       registry, keys=keys, now_ms=_now_ms())
            if isinstance(opened, Refusal):
                log.warning("bid_rejected", plan=cfp.plan, why=opened.detail)
                continue
            bid, entry = opened
            quotes = tuple(q for q in bid.quotes if entry.serves(q.capability))
            if bid.plan == cfp.plan and quotes:
                bids[bid.executor] = msgspec.structs.replace(bid, quotes=quotes)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return list(bids.values())


async def award(
    nc: Client,
    space: Space,
    plan_id: str,
    executor_id: str,
    steps: Sequence[str],
    *,
    registry: Registry,
    signer: Signer,
    quotes: Sequence[CapabilityOffer] = (),
    timeout_s: float = 2.0,
    keys: KeyRing | None = None,
) -> Award | Refusal:
    """Bind `steps` of `plan_id` to `executor_id` (request/reply on `maestro.award.<executor>`).

    Returns the Award the executor acknowledged (with the quotes it is bound to), its refusal,
    or an UNAVAILABLE refusal when no bidder answers. An answer not signed by the executor's
    registered key is a FORGED refusal: it binds nobody. The award itself is signed by the
    planner's `signer`, so a Bidder that names its planners binds itself to nobody else's.
    The caller journals the Award.
    """
    request = Award(
        plan=plan_id,
        executor=executor_id,
        steps=tuple(steps),
        quotes=tuple(quotes),
        awarded_ms=_now_ms(),
    )
    evidence = {"plan": plan_id, "executor": executor_id}
    try:
        reply = await nc.request(
            space.subject(award_subject(executor_id)),
            sign_statement(signer, AWARD, _encoder.encode(request)), timeout=timeout_s,
        )
    except nats.errors.NoRespondersError:
        detail = f"{executor_id} takes no awards"
        return Refusal(Reason.UNAVAILABLE, detail, retryable=True, evidence=evidence)
    except nats.errors.TimeoutError:
        detail = f"{executor_id} did not acknowledge in {timeout_s}s"
        return Refusal(Reason.UNAVAILABLE, detail, retryable=True, evidence=evidence)
    opened = await open_signed(reply.data, AWARD_ACK, _ack_decoder, lambda a: a.executor,
                               registry, keys=keys or KeyRing(), now_ms=_now_ms())
    if isinstance(opened, Refusal):
        # Unsigned, signed by another key, or not an ack: not the executor's answer.
        return Refusal(Reason.FORGED, f"award ack from {executor_id}: {opened.detail}",
                       evidence=evidence)
    ack = opened[0]
    if ack.executor != executor_id:
        return Refusal(Reason.FORGED, "award ack names another executor", evidence=evidence)
    if ack.refusal is not None:
        return ack.refusal
    if ack.award is None or ack.award.plan != plan_id or ack.award.executor != executor_id:
        detail = "award ack names another plan or executor"
        return Refusal(Reason.MALFORMED, detail, evidence=evidence)
    return ack.award


# --- MARKET: the executor's side -----------------------------------------------------------


class Bidder:
    """Answers calls for bids from its Offer and acknowledges its awards.

    `load` reports current in-flight work (e.g. from the Worker) for the surge pricing; `offer`
    may be reassigned while running. Accepted awards are kept in `awards` and passed to
    `on_award` when given.
    """

    def __init__(
        self,
        nc: Client,
        space: Space,
        offer: Offer,
        *,
        signer: Signer,
        load: Callable[[], int] = lambda: 0,
        valid_for_ms: int = 30_000,
        surge: float = 0.5,
        on_award: Callable[[Award], None] | None = None,
        planners: Container[str] | None = None,
    ) -> None:
        self.nc = nc
        # Whose awards bind this executor (MAESTRO's DIDs); None: any signed award (tests).
        self.planners = planners
        self.space = space
        self.offer = offer
        self.signer = signer  # the executor's own key: it signs every bid and acknowledgement
        self.load = load
        self.valid_for_ms = valid_for_ms
        self.surge = surge
        self.on_award = on_award
        self.bids: dict[str, Bid] = {}
        self.awards: list[Award] = []
        self._subs: list[Subscription] = []
        self._keys = KeyRing()

    async def start(self) -> Bidder:
        self._subs = [
            await self.nc.subscribe(self.space.subject(cfp_subject()), cb=self._on_cfp),
            await self.nc.subscribe(
                self.space.subject(award_subject(self.offer.executor)), cb=self._on_award
            ),
        ]
        await self.nc.flush()
        log.info("bidding", executor=self.offer.executor)
        return self

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self._subs = []

    async def __aenter__(self) -> Bidder:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _expire(self, now_ms: int) -> None:
        for plan in [p for p, b in self.bids.items() if b.valid_until_ms < now_ms]:
            del self.bids[plan]

    def _authors(self) -> Container[str] | Callable[[str], bool]:
        return _anyone if self.planners is None else self.planners

    async def _on_cfp(self, msg: Msg) -> None:
        if not msg.reply:
            return
        verified = open_statement(msg.data, CFP, keys=self._keys, authors=self._authors())
        if isinstance(verified, Refusal):
            log.warning("cfp_rejected", subject=msg.subject, why=verified.detail)
            return  # not a planner's call: no price given, no bid replaced
        try:
            cfp = _cfp_decoder.decode(verified.body)
        except _DECODE_ERRORS as error:
            log.warning("call for bids does not decode", subject=msg.subject, error=str(error))
            return
        now = _now_ms()
        if cfp.bids_due_ms is not None and cfp.bids_due_ms < now:
            return  # the caller has stopped listening
        bid = price(
            self.offer, cfp, load=self.load(), now_ms=now, valid_for_ms=self.valid_for_ms,
            surge=self.surge,
        )
        if bid is None:
            return
        self._expire(now)
        self.bids[cfp.plan] = bid
        await msg.respond(sign_statement(self.signer, BID, _encoder.encode(bid)))

    def decide(self, request: Award, now_ms: int) -> AwardAck:
        """Accept at the bid terms (or board terms without a bid); refuse an expired bid, steps
        that were not bid for, or quotes other than the bid's."""
        me = self.offer.executor
        evidence = {"plan": request.plan, "executor": me}

        def refuse(reason: Reason, detail: str) -> AwardAck:
            refusal = Refusal(reason, detail, evidence=evidence)
            return AwardAck(plan=request.plan, executor=me, refusal=refusal)

        if request.executor != me:
            return refuse(Reason.WRONG_AUDIENCE, f"award for {request.executor} reached {me}")
        bid = self.bids.get(request.plan)
        if bid is not None and bid.valid_until_ms < now_ms:
            return refuse(Reason.EXPIRED, f"the bid for {request.plan} expired")
        if bid is not None:
            unbid = sorted(set(request.steps) - set(bid.steps))
            if unbid:
                return refuse(Reason.UNKNOWN_STEP, f"no bid for steps {', '.join(unbid)}")
            terms = bid.quotes
        else:
            terms = self.offer.capabilities
        if request.quotes and any(q not in terms for q in request.quotes):
            return refuse(Reason.CONTRADICTORY_EVIDENCE, "award quotes differ from the bid")
        bound = msgspec.structs.replace(request, quotes=request.quotes or terms)
        return AwardAck(plan=request.plan, executor=me, award=bound)

    async def _on_award(self, msg: Msg) -> None:
        verified = open_statement(msg.data, AWARD, keys=self._keys, authors=self._authors())
        if isinstance(verified, Refusal):
            log.warning("award_rejected", subject=msg.subject, why=verified.detail)
            return  # not a planner's award: no answer binds anyone
        try:
            request = _award_decoder.decode(verified.body)
        except _DECODE_ERRORS as error:
            log.warning("award does not decode", subject=msg.subject, error=str(error))
            return
        ack = self.decide(request, _now_ms())
        if ack.award is not None:
            self.awards.append(ack.award)
            log.info("awarded", plan=request.plan, executor=ack.executor, steps=request.steps)
            if self.on_award is not None:
                self.on_award(ack.award)
        if msg.reply:
            await msg.respond(sign_statement(self.signer, AWARD_ACK, _encoder.encode(ack)))
