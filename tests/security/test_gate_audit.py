"""Every refusal the gate makes leaves exactly one audit record, and garbage never stops it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from envelope.client import Reply
from envelope.grants import grant_ref
from envelope.seal import seal
from streams.replies import Reason, Refusal
from streams.subjects import Space
from tests.envelope.gate_world import BODY, TRACE, Moon, audit_records, eventually, key, now_ms
from tests.envelope.test_bounds import DEEP


@pytest.fixture
async def moon(nc: Nats, js: JetStreamContext, space: Space) -> AsyncIterator[Moon]:
    world = Moon(nc, space)
    async with world.gate.serving():
        yield world


async def test_a_request_id_taken_by_another_caller_is_refused_with_one_audit_record(
    moon: Moon, nc: Nats, js: JetStreamContext, space: Space
) -> None:
    assert isinstance(await moon.client.call("moon.dispatch", BODY, request_id="shared-id"),
                      Reply)
    mallory = moon.client_for(nc, key("mallory"), space)
    request_id, trace, data = mallory.seal("moon.dispatch", BODY, request_id="shared-id")
    refused = await mallory.send("moon.dispatch", request_id, trace, data)
    assert isinstance(refused, Refusal) and refused.reason is Reason.REPLAYED
    expected = [("accepted", moon.caller.did), ("refused", key("mallory").did)]
    records = await audit_records(js, space)
    assert [(r.outcome, r.caller) for r in records] == expected
    assert refused.evidence["audit"] == records[1].ref
    again = await mallory.send("moon.dispatch", request_id, trace, data)  # the same bytes
    assert isinstance(again, Refusal) and again.reason is Reason.REPLAYED
    assert [(r.outcome, r.caller) for r in await audit_records(js, space)] == expected
    assert moon.runs == 1


def _raw(moon: Moon, *, request_id: str, body: bytes = b"", **changes: object) -> bytes:
    args: dict[str, object] = dict(
        audience=moon.service.did, capability="moon:dispatch",
        body=body or msgspec.msgpack.encode(BODY), grants=[moon.grant],
        grant=grant_ref(moon.grant), traceparent=TRACE, request_id=request_id,
        nonce=request_id.encode().ljust(16, b"."), now_ms=now_ms())
    args.update(changes)
    return seal(moon.caller, **args)  # type: ignore[arg-type]


async def test_every_kind_of_refusal_has_exactly_one_record_and_the_gate_serves_on(
    moon: Moon, nc: Nats, js: JetStreamContext, space: Space
) -> None:
    subject = space.subject("map.moon.dispatch")
    good = _raw(moon, request_id="ok-1")
    forged = bytearray(_raw(moon, request_id="forged"))
    forged[-3] ^= 1
    refusals = {
        "garbage": b"\x00garbage",
        "oversize": b"\x90" * (moon.trust.max_bytes + 1),
        "forged": bytes(forged),
        "expired": _raw(moon, request_id="old", now_ms=now_ms() - 3_600_000),
        "audience": _raw(moon, request_id="aud", audience=key("other").did),
        "capability": _raw(moon, request_id="cap", capability="moon:explode"),
        "bad id": _raw(moon, request_id="wf.*"),
        "deep body": _raw(moon, request_id="deep", body=DEEP),
        "replayed nonce": _raw(moon, request_id="ok-2", nonce=b"ok-1".ljust(16, b".")),
        "handler says no": _raw(moon, request_id="no", body=msgspec.msgpack.encode(
            {**BODY, "intent": "no"})),
    }
    assert (await nc.request(subject, good, timeout=10)).data
    for name, data in refusals.items():
        assert (await nc.request(subject, data, timeout=3)).data, name
    for data in refusals.values():  # the very same bytes again: still one record each
        assert (await nc.request(subject, data, timeout=3)).data
    records = await audit_records(js, space)
    refused = [r for r in records if r.outcome == "refused"]
    assert len(refused) == len(refusals), sorted((r.reason, r.id) for r in refused)
    assert len({r.id for r in refused}) == len(refusals)
    assert isinstance(await moon.client.call("moon.dispatch", BODY), Reply)


async def test_garbage_on_the_intent_path_never_stops_the_consumer(
    moon: Moon, js: JetStreamContext, space: Space
) -> None:
    subject = space.subject("intent.moon.dispatch")
    for junk in (b"", b"\xc1", DEEP, _raw(moon, request_id="a b"), b"\x91" * 10):
        await js.publish(subject, junk)
    good, _ = await moon.client.publish_intent("moon.dispatch", BODY)

    async def served() -> bool:
        return any(r.id == good for r in await audit_records(js, space))

    assert await eventually(served)
    assert moon.runs == 1 and moon.gate.ready.is_set()
