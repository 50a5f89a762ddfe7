"""Two replicas of one gate on one broker share a caller's allowance: a treaty's rate, a nonce
and a budget are each spent once across both, not once per replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from envelope.grants import grant_ref, mint_grant
from envelope.keys import KeyRing
from envelope.seal import Response, Trust, open_response, seal
from envelope.shared import LIMITS, ledger_key, set_balance
from envelope.treaty import Treaty, countersign, propose_treaty, treaty_ref
from streams.config import ensure_bucket
from streams.replies import Reason
from streams.subjects import Space
from tests.envelope.gate_world import BODY, HOUR, TRACE, Moon, audit_records, key, now_ms


@contextlib.asynccontextmanager
async def replicas(nc: Nats, js: JetStreamContext, space: Space,
                   **gate: Any) -> AsyncIterator[tuple[Moon, Moon]]:
    """Two gates of one service (same keys, same Space), as two processes would run them."""
    await ensure_bucket(js, space, LIMITS)
    one, two = Moon(nc, space, shared_limits=True, **gate), Moon(nc, space, shared_limits=True,
                                                                   **gate)
    async with one.gate.serving(), two.gate.serving():
        yield one, two


def opened(world: Moon, data: bytes, answer: bytes, request_id: str) -> Response:
    response = open_response(answer, issuer=world.service.did, keys=KeyRing(),
                             caller=world.caller.did, request_id=request_id, request=data)
    assert isinstance(response, Response), response
    return response


def sealed(world: Moon, request_id: str, *, nonce: bytes, tokens: int = 200,
           **extra: Any) -> bytes:
    body = {**BODY, "budget": {"tokens": tokens, "deadline_ms": 8000}}
    return seal(world.caller, audience=world.service.did, capability="moon:dispatch",
                body=msgspec.msgpack.encode(body), grants=extra.pop("grants", [world.grant]),
                grant=extra.pop("grant", grant_ref(world.grant)), traceparent=TRACE,
                request_id=request_id, nonce=nonce, now_ms=now_ms(), **extra)


async def dispatched(world: Moon, request_id: str, *, nonce: bytes, tokens: int) -> Response:
    """A dispatch reserving `tokens`, answered by `world`'s gate: the opened answer."""
    data = sealed(world, request_id, nonce=nonce, tokens=tokens)
    answer, _ = await world.gate.handle("dispatch", data)
    return opened(world, data, answer, request_id)


async def test_a_nonce_seen_by_one_replica_is_replayed_at_the_other(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    async with replicas(nc, js, space) as (one, two):
        first = sealed(one, "r-1", nonce=b"x" * 16)
        # the same signed nonce under another request id: only a nonce check can catch it
        again = sealed(one, "r-2", nonce=b"x" * 16)
        answer, _ = await one.gate.handle("dispatch", first)
        assert opened(one, first, answer, "r-1").outcome == "accepted"
        answer, _ = await two.gate.handle("dispatch", again)
        refused = opened(two, again, answer, "r-2").refusal
        assert refused is not None and refused.reason is Reason.REPLAYED
        assert one.runs + two.runs == 1
    records = await audit_records(js, space)
    assert [(r.outcome, r.reason) for r in records] == [
        ("accepted", None), ("refused", Reason.REPLAYED)]


async def test_a_budget_spent_at_one_replica_is_gone_at_the_other(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    async with replicas(nc, js, space) as (one, two):
        await set_balance(js, one.caller.did, 1000, space=space)
        assert (await dispatched(one, "r-1", nonce=b"1" * 16, tokens=600)).outcome == "accepted"
        refused = (await dispatched(two, "r-2", nonce=b"2" * 16, tokens=600)).refusal
        assert refused is not None and refused.reason is Reason.BUDGET_EXHAUSTED
        kv = await js.key_value(space.bucket(LIMITS.name))
        left = (await kv.get(ledger_key(one.caller.did))).value
        assert msgspec.msgpack.decode(left or b"") == 400


async def balance(js: JetStreamContext, space: Space, caller: str) -> int:
    kv = await js.key_value(space.bucket(LIMITS.name))
    return int(msgspec.msgpack.decode((await kv.get(ledger_key(caller))).value or b""))


async def test_a_spending_request_sent_again_gets_its_first_answer_and_spends_once(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    """A request that spends stores its nonce, and its first admission notes there that it
    reserved: its bytes again (a retry, at either replica) are admitted without reserving
    again and answered from the outcome store with the first answer."""
    async with replicas(nc, js, space) as (one, two):
        await set_balance(js, one.caller.did, 1000, space=space)
        data = sealed(one, "r-1", nonce=b"1" * 16, tokens=600)
        first, _ = await one.gate.handle("dispatch", data)
        assert opened(one, data, first, "r-1").outcome == "accepted"
        again, _ = await two.gate.handle("dispatch", data)
        assert again == first
        assert one.runs + two.runs == 1
        assert await balance(js, space, one.caller.did) == 400


async def test_a_retry_of_a_request_refused_for_its_budget_reserves_before_it_runs(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    """Only a reservation made is skipped: the same bytes again after a first attempt refused
    for a short balance (which stored its nonce and reserved nothing) are checked against the
    balance again, even on a route whose handler runs for every attempt."""
    async with replicas(nc, js, space) as (one, _):
        one.gate.route("dispatch_again", one.dispatch, capability="moon:dispatch",
                       idempotent=True)
        await set_balance(js, one.caller.did, 100, space=space)
        data = sealed(one, "r-1", nonce=b"1" * 16, tokens=600)
        for _ in range(2):
            answer, _ = await one.gate.handle("dispatch_again", data)
            refused = opened(one, data, answer, "r-1").refusal
            assert refused is not None and refused.reason is Reason.BUDGET_EXHAUSTED, refused
        assert one.runs == 0
        assert await balance(js, space, one.caller.did) == 100


async def test_concurrent_spends_on_both_replicas_never_overdraw(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    async with replicas(nc, js, space) as (one, two):
        await set_balance(js, one.caller.did, 1000, space=space)
        envelopes = [sealed(one, f"r-{i}", nonce=i.to_bytes(16, "big"), tokens=100)
                     for i in range(20)]
        answers = await asyncio.gather(*(
            (one if i % 2 else two).gate.handle("dispatch", data)
            for i, data in enumerate(envelopes)))
        outcomes = [opened(one, data, answer, f"r-{i}").outcome
                    for i, (data, (answer, _)) in enumerate(zip(envelopes, answers, strict=True))]
        assert outcomes.count("accepted") == 10
        assert one.runs + two.runs == 10


def _treaty(host: Moon, *, burst: int) -> tuple[bytes, bytes, Any, bytes]:
    partner_root, agent = key("partner-root"), key("partner-agent")
    now = now_ms()
    treaty = countersign(partner_root, propose_treaty(host.root, Treaty(
        host=host.root.did, partner=partner_root.did, scope=("moon:*",), rate_per_s=0.001,
        burst=burst, not_before_ms=now - HOUR, expiry_ms=now + HOUR, nonce=b"t" * 16)))
    grant = mint_grant(partner_root, audience=agent.did, capability="moon:*",
                       not_before_ms=now - HOUR, expiry_ms=now + HOUR, nonce=b"p" * 16)
    return treaty, treaty_ref(treaty), agent, grant


@pytest.mark.parametrize("burst", [4])
async def test_a_treaty_allows_its_calls_in_total_across_replicas_not_per_replica(
    nc: Nats, js: JetStreamContext, space: Space, burst: int
) -> None:
    async with replicas(nc, js, space) as (one, two):
        treaty, ref, agent, grant = _treaty(one, burst=burst)
        outcomes = []
        for i in range(3 * burst):
            data = seal(agent, audience=one.service.did, capability="moon:dispatch",
                        body=msgspec.msgpack.encode(BODY), grants=[grant],
                        grant=grant_ref(grant), traceparent=TRACE, request_id=f"t-{i}",
                        nonce=i.to_bytes(16, "big"), now_ms=now_ms(), treaty=treaty,
                        treaty_ref=ref)
            answer, _ = await (one if i % 2 else two).gate.handle("dispatch", data)
            response = open_response(answer, issuer=one.service.did, keys=KeyRing(),
                                     caller=agent.did, request_id=f"t-{i}", request=data)
            assert isinstance(response, Response)
            outcomes.append(response.refusal.reason if response.refusal else "accepted")
        assert outcomes.count("accepted") == burst, outcomes
        assert outcomes.count(Reason.RATE_LIMITED) == 2 * burst
    records = await audit_records(js, space)
    assert sum(r.reason is Reason.RATE_LIMITED for r in records) == 2 * burst


async def test_a_nonce_bucket_that_forgets_before_envelopes_expire_is_refused_at_start(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    await ensure_bucket(js, space, LIMITS)
    short = Trust(audience=key("moon").did, keys=KeyRing(), roots=frozenset({key("root").did}),
                  max_ttl_ms=3_600_000)  # longer than the 900 s the nonce bucket keeps
    world = Moon(nc, space, trust=short, shared_limits=True)
    with pytest.raises(RuntimeError, match="keeps nonces"):
        async with world.gate.serving():
            pass


async def test_a_request_that_reserves_nothing_is_admitted_without_reading_the_ledger(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    # A damaged ledger entry fails closed for what it meters (a reservation) and is not read
    # for a request that reserves no tokens: no balance can refuse one (never below 0).
    async with replicas(nc, js, space) as (one, _):
        kv = await js.key_value(space.bucket(LIMITS.name))
        await kv.put(ledger_key(one.caller.did), b"\xc1 not a balance")
        free = await dispatched(one, "r-free", nonce=b"f" * 16, tokens=0)
        assert free.outcome == "accepted"
        refused = (await dispatched(one, "r-metered", nonce=b"m" * 16, tokens=10)).refusal
        assert refused is not None and refused.reason is Reason.UNAVAILABLE
    with pytest.raises(ValueError, match="at least 0"):
        await set_balance(js, one.caller.did, -1, space=space)
