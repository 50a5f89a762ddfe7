"""The gate on a real nats-server: one audit record per request, replays answered from store."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from envelope.client import Client, Reply
from envelope.gate import Gate
from envelope.grants import Caveats, grant_ref, mint_grant
from envelope.keys import KeyRing, signer_from_seed
from envelope.revocations import RevocationWatcher, revoke
from envelope.seal import Opened, Trust
from streams.audit import AuditRecord
from streams.replies import Reason, Refusal
from streams.subjects import Space

HOUR = 3_600_000


class Dispatch(msgspec.Struct, frozen=True):
    intent: str
    budget: dict[str, int] | None = None


class Dispatched(msgspec.Struct, frozen=True):
    workflow_id: str


def key(name: str) -> Any:
    return signer_from_seed(hashlib.sha256(name.encode()).digest())


class Moon:
    """A toy moon.dispatch behind a gate; counts how often its handler really ran."""

    def __init__(self, nc: Nats, space: Space, **gate: Any) -> None:
        self.root, self.service, self.caller = key("root"), key("moon"), key("alice")
        self.runs = 0
        trust = Trust(
            audience=self.service.did,
            keys=KeyRing(),
            roots=frozenset({self.root.did}),
            revoked=set(),
        )
        self.gate = Gate(nc, service="moon", signer=self.service, trust=trust, space=space, **gate)
        self.gate.route("dispatch", self.dispatch)
        self.gate.route("explode", self.explode)
        now = time.time_ns() // 1_000_000
        self.grant = mint_grant(
            self.root,
            audience=self.caller.did,
            capability="moon:*",
            not_before_ms=now - HOUR,
            expiry_ms=now + HOUR,
            nonce=b"n" * 16,
            caveats=Caveats(max_tokens=1_000_000),
        )
        self.client = Client(
            nc, self.caller, {"moon": self.service.did}, grant=[self.grant], space=space
        )

    async def dispatch(self, opened: Opened) -> Dispatched | Refusal:
        self.runs += 1
        body = msgspec.msgpack.decode(opened.body, type=Dispatch)
        if body.intent == "no":
            return Refusal(Reason.POLICY_BLOCK, "this service says no")
        return Dispatched(workflow_id=f"wf-{self.runs}")

    async def explode(self, opened: Opened) -> Dispatched:
        raise RuntimeError("boom")


@pytest.fixture
async def moon(nc: Nats, js: JetStreamContext, space: Space) -> AsyncIterator[Moon]:
    world = Moon(nc, space, junk_rate_per_s=1.0, junk_burst=20)
    async with world.gate.serving():
        yield world


async def audit_records(js: JetStreamContext, space: Space) -> list[AuditRecord]:
    info = await js.stream_info(space.stream("AUDIT"))
    records = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await js.get_msg(space.stream("AUDIT"), seq)
        assert msg.data is not None
        records.append(msgspec.json.decode(msg.data, type=AuditRecord))
    return records


BODY = {"intent": "the conductor", "budget": {"tokens": 200, "deadline_ms": 8000}}


async def test_a_request_through_the_gate_leaves_exactly_one_audit_record(
    moon: Moon, js: JetStreamContext, space: Space
) -> None:
    reply = await moon.client.call("moon.dispatch", BODY)
    assert isinstance(reply, Reply), reply
    assert reply.result(Dispatched) == Dispatched("wf-1")
    records = await audit_records(js, space)
    assert len(records) == 1
    [record] = records
    assert record.outcome == "accepted"
    assert record.caller == moon.caller.did and record.caller_verified
    assert reply.audit == record.ref == f"max://record/{record.id}"


async def test_the_same_envelope_twice_runs_once_and_answers_the_first_outcome_twice(
    moon: Moon, js: JetStreamContext, space: Space
) -> None:
    request_id, trace, data = moon.client.seal("moon.dispatch", BODY)
    first = await moon.client.send("moon.dispatch", request_id, trace, data)
    second = await moon.client.send("moon.dispatch", request_id, trace, data)
    # a retry re-sealed with a new nonce but the same request id is the same request
    _, _, resealed = moon.client.seal("moon.dispatch", BODY, request_id=request_id)
    third = await moon.client.send("moon.dispatch", request_id, trace, resealed)
    assert isinstance(first, Reply) and isinstance(second, Reply) and isinstance(third, Reply)
    assert first.result(Dispatched) == second.result(Dispatched) == third.result(Dispatched)
    assert moon.runs == 1
    assert len(await audit_records(js, space)) == 1


async def test_a_refusal_is_stored_and_replayed_like_a_success(
    moon: Moon, js: JetStreamContext, space: Space
) -> None:
    request_id, trace, data = moon.client.seal("moon.dispatch", {**BODY, "intent": "no"})
    first = await moon.client.send("moon.dispatch", request_id, trace, data)
    again = await moon.client.send("moon.dispatch", request_id, trace, data)
    assert isinstance(first, Refusal) and first.reason is Reason.POLICY_BLOCK
    assert first == again
    assert moon.runs == 1
    [record] = await audit_records(js, space)
    assert record.outcome == "refused" and record.code == 2003


async def test_an_envelope_refusal_names_the_verified_caller_and_its_code(
    moon: Moon, js: JetStreamContext, space: Space
) -> None:
    refused = await moon.client.call("moon.dispatch", BODY, capability="moon:read")
    assert isinstance(refused, Refusal) and refused.reason is Reason.NO_CAPABILITY
    assert refused.code == 1009
    [record] = await audit_records(js, space)
    assert record.caller_verified and record.reason is Reason.NO_CAPABILITY
    assert moon.runs == 0


async def test_a_forged_request_is_never_attributed_to_the_claimed_caller(
    moon: Moon, nc: Nats, js: JetStreamContext, space: Space
) -> None:
    mallory = Client(
        nc, key("mallory"), {"moon": moon.service.did}, grant=[moon.grant], space=space
    )
    _, _, data = mallory.seal("moon.dispatch", BODY)
    wire = msgspec.msgpack.decode(data)
    wire[0] = moon.caller.did  # claim to be alice
    msg = await nc.request(space.subject("map.moon.dispatch"), msgspec.msgpack.encode(wire))
    assert msg.data
    [record] = await audit_records(js, space)
    assert record.reason is Reason.BAD_SIGNATURE
    assert record.caller == "" and not record.caller_verified
    assert record.id == hashlib.sha256(msgspec.msgpack.encode(wire)).hexdigest()


async def test_a_failing_handler_is_audited_as_failed_and_can_be_retried(
    moon: Moon, js: JetStreamContext, space: Space
) -> None:
    request_id, trace, data = moon.client.seal("moon.explode", BODY)
    outcome = await moon.client.send("moon.explode", request_id, trace, data)
    assert isinstance(outcome, Refusal) and outcome.reason is Reason.UNAVAILABLE
    assert outcome.retryable
    [record] = await audit_records(js, space)
    assert record.outcome == "failed"


async def test_junk_floods_are_refused_counted_and_valid_requests_still_served(
    moon: Moon, nc: Nats, js: JetStreamContext, space: Space
) -> None:
    forger = Client(nc, key("mallory"), {"moon": moon.service.did}, grant=[moon.grant], space=space)
    subject = space.subject("map.moon.dispatch")
    served = 0
    started = asyncio.get_running_loop().time()
    for i in range(1000):
        if i % 2:
            junk = i.to_bytes(4, "big") * 8
        else:
            _, _, forged = forger.seal("moon.dispatch", BODY)
            wire = msgspec.msgpack.decode(forged)
            wire[0] = moon.caller.did
            junk = msgspec.msgpack.encode(wire)
        msg = await nc.request(subject, junk, timeout=5)
        assert msg.data
        if i % 100 == 0:
            reply = await moon.client.call("moon.dispatch", BODY)
            assert isinstance(reply, Reply), reply
            served += 1
    assert served == 10 and moon.runs == 10
    assert moon.gate.audit.counts["unauthenticated"] == 1000
    records = await audit_records(js, space)
    junk_stored = [r for r in records if not r.caller_verified]
    assert len([r for r in records if r.outcome == "accepted"]) == 10
    # stored through a bucket of 20 plus 1/s: the disk sees a trickle, not the flood
    elapsed = asyncio.get_running_loop().time() - started
    assert 20 <= len(junk_stored) <= 21 + elapsed, (len(junk_stored), elapsed)
    assert moon.gate.audit.counts["unauthenticated_dropped"] == 1000 - len(junk_stored)


async def test_the_intent_path_shares_the_handler_and_dedupes_redelivery(
    moon: Moon, js: JetStreamContext, space: Space
) -> None:
    request_id, ack = await moon.client.publish_intent("moon.dispatch", BODY)
    assert ack.seq >= 1
    request_id2, _, data = moon.client.seal("moon.dispatch", BODY)
    await js.publish(space.subject("intent.moon.dispatch"), data)
    await js.publish(space.subject("intent.moon.dispatch"), data)  # the same envelope again
    for _ in range(400):
        if len(await audit_records(js, space)) >= 2 and moon.runs >= 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    records = await audit_records(js, space)
    assert moon.runs == 2
    assert sorted(r.id for r in records) == sorted([request_id, request_id2])
    assert all(r.outcome == "accepted" for r in records)


async def test_a_grant_revoked_in_the_kv_bucket_is_refused_by_a_watching_gate(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    world = Moon(nc, space)
    watcher = RevocationWatcher(js, space=space)
    world.gate.trust = msgspec.structs.replace(world.gate.trust, revoked=watcher.revoked)
    follow = asyncio.get_running_loop().create_task(watcher.run())
    try:
        async with world.gate.serving():
            assert isinstance(await world.client.call("moon.dispatch", BODY), Reply)
            await revoke(js, grant_ref(world.grant), space=space)
            for _ in range(500):  # the watch delivers in ms; 10 s for a busy machine
                if watcher.revoked:
                    break
                await asyncio.sleep(0.02)
            refused = await world.client.call("moon.dispatch", BODY)
            assert isinstance(refused, Refusal) and refused.reason is Reason.GRANT_REVOKED
    finally:
        follow.cancel()
