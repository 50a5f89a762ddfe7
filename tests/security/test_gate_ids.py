"""Ids at the gate: a request id that cannot be a KV key or a subject token is answered,
refused as invalid_id and audited once, on both paths, and the gate keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from envelope.client import Reply
from envelope.grants import grant_ref
from envelope.seal import Response, open_response, seal
from streams.replies import Reason
from streams.subjects import Space
from tests.envelope.gate_world import BODY, Moon, audit_records, eventually, now_ms

BAD_IDS = ["a.b", "wf.*", ">", "a b", "x" * 65, "tab\there", "\u00e9t\u00e9", "a/b", "a\r\nb"]


@pytest.fixture
async def moon(nc: Nats, js: JetStreamContext, space: Space) -> AsyncIterator[Moon]:
    world = Moon(nc, space)
    async with world.gate.serving():
        yield world


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_a_request_id_with_subject_characters_is_answered_refused_and_audited(
    moon: Moon, nc: Nats, js: JetStreamContext, space: Space, bad: str
) -> None:
    _, _, data = moon.client.seal("moon.dispatch", BODY, request_id=bad)
    msg = await nc.request(space.subject("map.moon.dispatch"), data, timeout=10)
    response = open_response(msg.data, issuer=moon.service.did, keys=moon.trust.keys,
                             caller=moon.caller.did, request_id=bad, request=data)
    assert isinstance(response, Response) and response.refusal is not None, response
    assert response.refusal.reason is Reason.INVALID_ID
    [record] = await audit_records(js, space)
    assert record.reason is Reason.INVALID_ID
    assert record.caller == moon.caller.did and record.caller_verified  # the signature held
    assert moon.runs == 0
    assert isinstance(await moon.client.call("moon.dispatch", BODY), Reply)  # still serving


async def test_a_bad_request_id_on_the_intent_path_is_audited_and_does_not_stop_the_consumer(
    moon: Moon, js: JetStreamContext, space: Space
) -> None:
    for bad in BAD_IDS:
        _, _, data = moon.client.seal("moon.dispatch", BODY, request_id=bad)
        await js.publish(space.subject("intent.moon.dispatch"), data)
    good, _ = await moon.client.publish_intent("moon.dispatch", BODY)

    async def all_answered() -> bool:
        return len(await audit_records(js, space)) >= len(BAD_IDS) + 1

    assert await eventually(all_answered), "the intent consumer stopped on a bad id"
    records = await audit_records(js, space)
    assert len(records) == len(BAD_IDS) + 1
    assert sum(r.reason is Reason.INVALID_ID for r in records) == len(BAD_IDS)
    assert [r.id for r in records if r.outcome == "accepted"] == [good]
    assert moon.runs == 1
    assert moon.gate.ready.is_set()


async def test_a_bad_traceparent_after_a_good_signature_is_audited_without_it(
    moon: Moon, nc: Nats, js: JetStreamContext, space: Space
) -> None:
    # the header is signed but refused as malformed: its fields must not reach NATS headers
    data = seal(moon.caller, audience=moon.service.did, capability="moon:dispatch",
                body=msgspec.msgpack.encode(BODY), grants=[moon.grant],
                grant=grant_ref(moon.grant), traceparent="00-x\r\nNats-Msg-Id: evil",
                request_id="r-1", nonce=b"n" * 16, now_ms=now_ms())
    msg = await nc.request(space.subject("map.moon.dispatch"), data, timeout=10)
    assert msg.data
    [record] = await audit_records(js, space)
    assert record.reason is Reason.MALFORMED and record.traceparent == ""
