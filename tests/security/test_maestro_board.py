"""Board offers and bids are signed by the executor's registered key, and the trust MAESTRO plans
with is the registry's (issue 10, MAESTRO attack 3).

The attack: anyone who may write the board bucket put an unsigned offer claiming trust 1.0 at
price 0, and it won every step.
"""

from __future__ import annotations

import contextlib

import msgspec
import nats.errors
from nats.aio.msg import Msg

from envelope.keys import KeyRing
from envelope.local import executor_key, local_trust
from envelope.registry import Registration, Registry, register
from envelope.statement import OFFER, open_statement, sign_statement
from maestro.board import (
    AWARD_ACK,
    CFP,
    Award,
    AwardAck,
    Bidder,
    Board,
    award,
    award_subject,
    cfp_subject,
    price,
)
from maestro.goal import Budget, CapabilityOffer, Goal, Offer, Step
from maestro.policy import Policy, StepTrust
from maestro.service import Maestro, Market
from streams.config import BOARD
from streams.replies import Reason, Refusal

from .maestro_world import stranger

GOAL = Goal(name="three", deadline_ms=60_000, budget=Budget(tokens=10_000),
            steps=(Step("a", "work", duration_ms=300), Step("b", "work", needs=("a",),
                                                           duration_ms=300),
                   Step("c", "work", needs=("b",), duration_ms=300)))


def _offer(executor: str, rate: int, trust: float = 1.0) -> Offer:
    return Offer(executor=executor, organisation="acme", trust=trust, capacity=3, bids=True,
                 capabilities=(CapabilityOffer("work", duration_ms=300, rate=rate),))


async def test_forged_and_self_trusted_offers_win_nothing(nc, js, space, tmp_path):
    trust = local_trust(tmp_path)
    honest_key = executor_key(tmp_path, "honest")
    shady_key = executor_key(tmp_path, "shady")
    await register(js, trust.operator, Registration("honest", honest_key.did, trust=0.9),
                   space=space)
    await register(js, trust.operator, Registration("shady", shady_key.did, ("work",),
                                                    trust=0.2), space=space)
    registry = await Registry(js, registrars=trust.registrars, space=space).start()
    board = Board(js, space, registry=registry)
    await board.publish(_offer("honest", 5), honest_key)
    kv = await js.key_value(space.bucket(BOARD.name))
    # 1. unsigned, claiming trust 1.0 at price 0, for an executor nobody registered;
    await kv.put("evil", msgspec.json.encode(_offer("evil", 0)))
    # 2. signed, but by a key nobody registered;
    await kv.put("ghost", sign_statement(stranger(), OFFER,
                                         msgspec.json.encode(_offer("ghost", 0))))
    # 3. a registered executor's key, signing an offer for another executor;
    await kv.put("honest2", sign_statement(shady_key, OFFER,
                                           msgspec.json.encode(_offer("honest2", 0))))
    # 4. a registered executor claiming a trust it was not given.
    await board.publish(_offer("shady", 0, trust=1.0), shady_key)
    try:
        live = {o.executor: o for o in await board.live()}
        assert set(live) == {"honest", "shady"}
        assert live["shady"].trust == 0.2  # the registry's, not the offer's
        assert live["honest"].trust == 0.9

        async def offers():
            return await board.live()

        picky = Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, offers,
                        space=space, market=Market(bid_timeout_s=0), policy=Policy(
                            step_trust=tuple(StepTrust(s.id, 0.5) for s in GOAL.steps)))
        outcome = await picky.plan(GOAL, plan_id="p1")
        assert outcome.decision == "planned", outcome.reasons
        assert {a.executor for a in outcome.plan.assignments} == {"honest"}
    finally:
        await registry.stop()


async def test_a_bid_not_signed_by_the_bidder_is_not_a_bid(nc, js, space, tmp_path):
    """Anyone may answer a call for bids: a bid naming `honest` at price 0, unsigned or signed
    by another key, must not reprice honest's steps."""
    trust = local_trust(tmp_path)
    honest_key = executor_key(tmp_path, "honest")
    await register(js, trust.operator, Registration("honest", honest_key.did, trust=0.9),
                   space=space)
    registry = await Registry(js, registrars=trust.registrars, space=space).start()
    board = Board(js, space, registry=registry)
    await board.publish(_offer("honest", 5), honest_key)
    impostor = stranger()

    async def answer(msg: Msg) -> None:
        from maestro.board import CallForBids  # noqa: PLC0415

        opened = open_statement(msg.data, CFP, keys=KeyRing(), authors={trust.maestro.did})
        assert not isinstance(opened, Refusal), opened
        cfp = msgspec.json.decode(opened.body, type=CallForBids)
        cheap = price(_offer("honest", 0), cfp, now_ms=0, valid_for_ms=10**15)
        assert cheap is not None
        await msg.respond(msgspec.json.encode(cheap))
        await msg.respond(sign_statement(impostor, b"maestro.bid.v1", msgspec.json.encode(cheap)))

    sub = await nc.subscribe(space.subject(cfp_subject()), cb=answer)
    try:
        async def offers():
            return await board.live()

        m = Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, offers, space=space,
                    market=Market(bid_timeout_s=0.5), registry=registry)
        outcome = await m.plan(GOAL, plan_id="p1")
        assert outcome.decision == "planned", outcome.reasons
        assert outcome.plan.cost == 15  # honest's board price, 5 a step: no forged bid used
    finally:
        await sub.unsubscribe()
        await registry.stop()


async def test_an_award_acknowledged_by_anyone_but_the_executor_binds_nobody(
    nc, js, space, tmp_path
):
    """Whoever answers first on `maestro.award.<executor>` is not the executor: an ack that its
    registered key did not sign is a forged refusal, never an Award MAESTRO would journal."""
    trust = local_trust(tmp_path)
    honest_key = executor_key(tmp_path, "honest")
    await register(js, trust.operator, Registration("honest", honest_key.did), space=space)
    registry = await Registry(js, registrars=trust.registrars, space=space).start()
    bound = Award(plan="p1", executor="honest", steps=("a",),
                  quotes=(CapabilityOffer("work", duration_ms=300, rate=0),))
    ack = msgspec.json.encode(AwardAck(plan="p1", executor="honest", award=bound))
    for answer in (ack, sign_statement(stranger(), AWARD_ACK, ack)):
        async def respond(msg: Msg, answer: bytes = answer) -> None:
            await msg.respond(answer)

        sub = await nc.subscribe(space.subject(award_subject("honest")), cb=respond)
        try:
            got = await award(nc, space, "p1", "honest", ["a"], registry=registry,
                              signer=trust.maestro)
        finally:
            await sub.unsubscribe()
        assert isinstance(got, Refusal), got
        assert got.reason is Reason.FORGED
    await registry.stop()


async def test_a_bidder_binds_itself_only_to_its_planners_awards(nc, js, space, tmp_path):
    """An award is a commitment: a Bidder that names MAESTRO's DIDs answers no award MAESTRO
    did not sign (unsigned, or signed by anyone else), and records none."""
    trust = local_trust(tmp_path)
    key = executor_key(tmp_path, "honest")
    await register(js, trust.operator, Registration("honest", key.did), space=space)
    registry = await Registry(js, registrars=trust.registrars, space=space).start()
    bidder = Bidder(nc, space, _offer("honest", 5), signer=key, planners=trust.planners)
    try:
        async with bidder:
            unsigned = Award(plan="p1", executor="honest", steps=("a",))
            with contextlib.suppress(nats.errors.TimeoutError):
                await nc.request(space.subject(award_subject("honest")),
                                 msgspec.json.encode(unsigned), timeout=0.5)
            forged = await award(nc, space, "p1", "honest", ["a"], registry=registry,
                                 signer=stranger(), timeout_s=0.5)
            assert isinstance(forged, Refusal)
            assert forged.reason is Reason.UNAVAILABLE  # nobody answered it
            assert bidder.awards == []
            real = await award(nc, space, "p1", "honest", ["a"], registry=registry,
                               signer=trust.maestro)
            assert isinstance(real, Award), real
            assert bidder.awards == [real]
    finally:
        await registry.stop()


async def test_a_bidder_prices_only_its_planners_calls_for_bids(nc, js, space, tmp_path):
    """A call for bids changes what a Bidder holds (its bid for the plan, which the award is
    checked against): one MAESTRO did not sign (unsigned, or signed by anyone else) gets no
    price and replaces nothing, so the real award still binds."""
    from maestro.board import CallForBids, CfpStep, call_for_bids, cfp_subject  # noqa: PLC0415

    trust = local_trust(tmp_path)
    key = executor_key(tmp_path, "honest")
    await register(js, trust.operator, Registration("honest", key.did), space=space)
    registry = await Registry(js, registrars=trust.registrars, space=space).start()
    bidder = Bidder(nc, space, _offer("honest", 5), signer=key, planners=trust.planners)
    real = CallForBids(plan="p1", steps=(CfpStep("a", "work", duration_ms=100),))
    other = CallForBids(plan="p1", steps=(CfpStep("zz", "work", duration_ms=100),))
    try:
        async with bidder:
            bids = await call_for_bids(nc, space, real, 1.0, expected=1, registry=registry,
                                       signer=trust.maestro)
            assert [b.steps for b in bids] == [("a",)]
            subject = space.subject(cfp_subject("p1"))
            for forged in (msgspec.json.encode(other),  # unsigned
                           sign_statement(stranger(), CFP, msgspec.json.encode(other))):
                with contextlib.suppress(nats.errors.TimeoutError):
                    answer = await nc.request(subject, forged, timeout=0.5)
                    raise AssertionError(f"a forged call was priced: {answer.data[:80]!r}")
            assert bidder.bids["p1"].steps == ("a",)  # the real bid, not replaced
            bound = await award(nc, space, "p1", "honest", ["a"], registry=registry,
                                signer=trust.maestro)
            assert isinstance(bound, Award), bound
    finally:
        await registry.stop()
