"""The executor board (MAT) and the call for bids (MARKET): pure pricing, then a real server."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KV_PURGE

from envelope.keys import Signer, signer_from_seed
from envelope.registry import Registration, Registry, register
from maestro.board import (
    Advertiser,
    Award,
    Bid,
    Bidder,
    Board,
    CallForBids,
    CfpStep,
    award,
    call_for_bids,
    cfp_subject,
    price,
    refresh_offers,
)
from maestro.goal import CapabilityOffer, Offer
from streams.replies import Reason, Refusal
from streams.subjects import Space
from tests.maestro.conftest import Executors, executors, offer

PLANNER = signer_from_seed(b"p" * 32)  # the Bidders here name no planners: any signed call
CFP = CallForBids(
    plan="p1",
    steps=(
        CfpStep("s1", "search", duration_ms=1000),
        CfpStep("s2", "write", duration_ms=4000),
        CfpStep("s3", "search", duration_ms=3000),
    ),
    deadline_ms=60_000,
)


# --- pure ----------------------------------------------------------------------------------


def test_price_quotes_the_capabilities_it_has_and_surges_with_load() -> None:
    searcher = offer("a", ("search", 500, 10), capacity=2)
    idle = price(searcher, CFP, now_ms=1_000)
    assert idle is not None
    assert idle.steps == ("s1", "s3")
    assert idle.quotes == (CapabilityOffer("search", duration_ms=500, rate=10),)
    assert idle.valid_until_ms == 31_000
    busy = price(searcher, CFP, load=2, now_ms=1_000, surge=0.5)
    assert busy is not None
    assert busy.quotes[0].rate == 15  # full: 1.5 x the board rate
    assert busy.load == 2


def test_price_without_a_matching_capability_is_no_bid() -> None:
    assert price(offer("x", ("review", 1, 1)), CFP, now_ms=0) is None


def test_price_falls_back_to_the_largest_step_estimate() -> None:
    vague = Offer("v", "acme", (CapabilityOffer("search", rate=3),))
    bid = price(vague, CFP, now_ms=0)
    assert bid is not None
    assert bid.quotes[0].duration_ms == 3000


def test_refresh_offers_applies_bid_terms() -> None:
    board = (
        offer("a", ("search", 500, 10), ("write", 900, 50)),
        offer("b", ("search", 700, 8)),
        offer("c", ("write", 800, 40)),
    )
    bids = [
        Bid("p1", "a", ("s1",), (CapabilityOffer("search", 400, rate=12),), valid_until_ms=100),
        Bid("p1", "ghost", ("s1",), (CapabilityOffer("search", 1, rate=1),), valid_until_ms=100),
        Bid("p1", "b", ("s1",), (CapabilityOffer("search", 600, rate=9),), valid_until_ms=5),
    ]
    fresh = refresh_offers(board, bids)
    assert [o.executor for o in fresh] == ["a", "b", "c"]
    a, b, c = fresh
    assert a.capabilities == (
        CapabilityOffer("search", 400, rate=12),  # bid terms
        CapabilityOffer("write", 900, rate=50),  # not quoted: board terms
    )
    assert a.organisation == "acme"
    assert b.capabilities == (CapabilityOffer("search", 600, rate=9),)
    assert c == board[2]  # did not bid: board price
    strict = refresh_offers(board, bids, require_bid=True, now_ms=50)
    assert [o.executor for o in strict] == ["a"]  # b's bid expired, c never bid, ghost unknown


# --- MAT -----------------------------------------------------------------------------------


async def test_published_offer_is_live_and_withdrawn(js: JetStreamContext, space: Space) -> None:
    async with executors(js, space, "acme-a", "acme-b") as known:
        board = Board(js, space, registry=known.registry)
        assert await board.live() == ()
        a, b = offer("acme-b", ("search", 5, 1)), offer("acme-a", ("write", 9, 2))
        await board.publish(a, known.key("acme-b"))
        await board.publish(b, known.key("acme-a"))
        assert await board.live() == (b, a)  # sorted by executor
        assert await board.ttl_s() == 15.0
        await board.withdraw("acme-b")
        assert await board.live() == (b,)


async def test_the_board_plans_with_registered_trust_and_capabilities(
    js: JetStreamContext, space: Space
) -> None:
    """An offer is believed as registered: the registry's trust, only the capabilities the
    registration lets it serve; an executor left with none is not on the board."""
    async with executors(js, space, "a", "b") as known:
        for name in ("a", "b"):
            await register(js, known.registrar, Registration(
                name, known.key(name).did, capabilities=("search",), trust=0.3), space=space)
        # A registry started now has loaded the new entries.
        registry = await Registry(js, registrars={known.registrar.did}, space=space).start()
        try:
            board = Board(js, space, registry=registry)
            await board.publish(offer("a", ("search", 5, 1), ("write", 9, 2)), known.key("a"))
            await board.publish(offer("b", ("write", 9, 2)), known.key("b"))
            live = await board.live()
        finally:
            await registry.stop()
        assert [(o.executor, o.trust) for o in live] == [("a", 0.3)]
        assert [c.capability for c in live[0].capabilities] == ["search"]
        assert "no capability" in board.rejected["b"]


async def test_offer_not_refreshed_expires(js: JetStreamContext, space: Space) -> None:
    bucket = space.bucket("board_fast")
    kv = await js.create_key_value(
        api.KeyValueConfig(bucket=bucket, ttl=1.0, limit_marker_ttl=1.0)
    )
    async with executors(js, space, "fleeting") as known:
        board = Board(js, space, registry=known.registry, bucket=bucket)
        await board.publish(offer("fleeting", ("search", 5, 1)), known.key("fleeting"))
        assert [o.executor for o in await board.live()] == ["fleeting"]
        watcher = await kv.watch("fleeting")
        await _expires(watcher)
        assert await board.live() == ()


async def _expires(watcher: object) -> None:

    async def expired() -> None:
        while True:
            entry = await watcher.updates(timeout=10)  # type: ignore[attr-defined]
            if entry is not None and entry.operation == KV_PURGE:
                return

    try:
        await asyncio.wait_for(expired(), timeout=10)  # the server's MaxAge marker
    finally:
        await watcher.stop()  # type: ignore[attr-defined]


async def test_advertiser_keeps_an_offer_alive(js: JetStreamContext, space: Space) -> None:
    bucket = space.bucket("board_adv")
    await js.create_key_value(api.KeyValueConfig(bucket=bucket, ttl=1.0))
    async with executors(js, space, "steady") as known:
        board = Board(js, space, registry=known.registry, bucket=bucket)
        mine = offer("steady", ("search", 5, 1))
        refreshed = asyncio.Event()
        publish = board.publish

        async def publish_and_tell(offer: Offer, signer: Signer) -> None:
            await publish(offer, signer)
            refreshed.set()

        board.publish = publish_and_tell  # type: ignore[method-assign]
        async with Advertiser(board, mine, signer=known.key("steady")) as advertiser:
            assert await board.live() == (mine,)  # ttl/3 = 0.33 s between refreshes
            loop = asyncio.get_running_loop()
            started = loop.time()
            # well past the TTL, a refresh at a time (and at least 3 of them after the first,
            # should the machine stall through the whole 1.8 s)
            while loop.time() - started < 1.8 or advertiser.published < 4:
                refreshed.clear()
                await asyncio.wait_for(refreshed.wait(), timeout=5)
            # just after a refresh, so a stall of the machine cannot have aged it past the TTL
            assert await board.live() == (mine,)
            assert advertiser.published >= 3
        assert await board.live() == ()  # withdrawn on stop


# --- MARKET --------------------------------------------------------------------------------


async def test_call_for_bids_keeps_only_timely_bids(
    nc: Client, js: JetStreamContext, space: Space
) -> None:
    late_sent, closed = asyncio.Event(), asyncio.Event()
    slow_offer = offer("slow", ("search", 100, 1))

    async def slow(msg: Msg) -> None:
        await closed.wait()  # late by construction: it answers once the call has closed
        bid = price(slow_offer, CFP, now_ms=0, valid_for_ms=10**15)
        assert bid is not None
        await msg.respond(msgspec.json.encode(bid))
        late_sent.set()

    slow_sub = await nc.subscribe(space.subject(cfp_subject()), cb=slow)
    async with executors(js, space, "a", "b", "o", "slow") as known:
        a = Bidder(nc, space, offer("a", ("search", 500, 10)), signer=known.key("a"))
        b = Bidder(nc, space, offer("b", ("write", 900, 50)), load=lambda: 1,
                   signer=known.key("b"))
        outsider = Bidder(nc, Space(space.prefix + "other"), offer("o", ("search", 1, 1)),
                          signer=known.key("o"))
        async with a, b, outsider:
            bids = await call_for_bids(nc, space, CFP, timeout_s=3.0, registry=known.registry,
                                       signer=PLANNER)
            closed.set()
            await asyncio.wait_for(late_sent.wait(), timeout=10)
    await slow_sub.unsubscribe()
    assert sorted(bid.executor for bid in bids) == ["a", "b"]
    by = {bid.executor: bid for bid in bids}
    assert by["a"].steps == ("s1", "s3")
    assert by["b"].quotes == (CapabilityOffer("write", 900, rate=75),)  # load 1 of capacity 1


async def test_call_for_bids_stops_at_expected(
    nc: Client, js: JetStreamContext, space: Space
) -> None:
    async with executors(js, space, "a") as known:
        async with Bidder(nc, space, offer("a", ("search", 500, 10)), signer=known.key("a")):
            started = asyncio.get_running_loop().time()
            bids = await call_for_bids(nc, space, CFP, timeout_s=10.0, expected=1,
                                       registry=known.registry, signer=PLANNER)
            assert asyncio.get_running_loop().time() - started < 5.0
        assert [bid.executor for bid in bids] == ["a"]
        nobody = await call_for_bids(nc, space, CFP, timeout_s=0.2, registry=known.registry,
                                     signer=PLANNER)
        assert nobody == []  # nobody listening


async def test_award_is_acknowledged_by_the_right_executor(
    nc: Client, js: JetStreamContext, space: Space
) -> None:
    async with executors(js, space, "a", "b") as known:
        await _award_round(nc, space, known)


async def _award_round(nc: Client, space: Space, known: Executors) -> None:
    seen: list[Award] = []
    registry = known.registry

    async def bind(plan: str, executor: str, steps: list[str], **options: object
                   ) -> Award | Refusal:
        return await award(nc, space, plan, executor, steps, registry=registry,
                           signer=known.registrar, **options)  # type: ignore[arg-type]
    a = Bidder(nc, space, offer("a", ("search", 500, 10)), signer=known.key("a"))
    b = Bidder(nc, space, offer("b", ("search", 400, 20)), load=lambda: 1, on_award=seen.append,
               signer=known.key("b"))
    async with a, b:
        bids = {bid.executor: bid for bid in await call_for_bids(
            nc, space, CFP, 10.0, expected=2, registry=registry, signer=known.registrar)}
        bound = await bind("p1", "b", ["s1", "s3"])
        assert isinstance(bound, Award)
        assert bound.executor == "b"
        assert bound.steps == ("s1", "s3")
        assert bound.quotes == bids["b"].quotes  # bound at the bid price
        assert b.awards == [bound] == seen
        assert a.awards == []

        unbid = await bind("p1", "a", ["s2"])
        assert isinstance(unbid, Refusal)
        assert unbid.reason is Reason.UNKNOWN_STEP
        cheaper = (CapabilityOffer("search", 400, rate=1),)
        haggled = await bind("p1", "b", ["s1"], quotes=cheaper)
        assert isinstance(haggled, Refusal)
        assert haggled.reason is Reason.CONTRADICTORY_EVIDENCE
        at_board = await bind("p2", "a", ["x"])  # board terms
        assert isinstance(at_board, Award)
        assert at_board.quotes == a.offer.capabilities

    gone = await bind("p1", "b", ["s1"], timeout_s=0.5)
    assert isinstance(gone, Refusal)
    assert gone.reason is Reason.UNAVAILABLE


@pytest.mark.parametrize("executor", ["acme.researcher", "a b"])
async def test_executor_ids_that_are_no_token_never_reach_the_board(
    js: JetStreamContext, space: Space, executor: str
) -> None:
    """An id with a dot or a space cannot be registered, so an offer under it, signed or not,
    is never believed (once it would have been folded into a token and shared a key)."""
    from envelope.keys import signer_from_seed  # noqa: PLC0415

    key = signer_from_seed(bytes(32))
    with pytest.raises(ValueError, match="executor id"):
        await register(js, key, Registration(executor, key.did), space=space)
    async with executors(js, space) as known:
        board = Board(js, space, registry=known.registry)
        await board.publish(offer(executor, ("search", 5, 1)), key)
        assert await board.live() == ()
        assert board.rejected
