"""Bounds: nesting deep enough to exhaust a decoder's stack, anywhere in an envelope, is refused
(never raised), and through a real gate it is answered and audited while the gate serves on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from envelope.client import Reply
from envelope.seal import Response, Trust, open_response
from streams.replies import Reason, Refusal
from streams.subjects import Space
from tests.envelope.gate_world import BODY, Moon, audit_records, key
from tests.envelope.test_bounds import DEEP, DEEP_MAP, WORLD, outcome, payload, signed

# The places where such nesting used to escape open_envelope as a RecursionError; the other
# places (outer bytes, payload, header, grants, treaty) are covered in tests/envelope.
PLACES = {
    "body": signed(payload(body=DEEP)),
    "body map": signed(payload(body=DEEP_MAP)),
    "budget field": signed(payload(body=b"\x81\xa6budget" + DEEP)),
}


@pytest.mark.parametrize("place", sorted(PLACES))
def test_deep_nesting_in_the_body_is_a_refusal_not_an_exception(place: str) -> None:
    result = outcome(PLACES[place])
    assert isinstance(result, Refusal), result
    assert result.reason is Reason.MALFORMED


@pytest.fixture
async def moon(nc: Nats, js: JetStreamContext, space: Space) -> AsyncIterator[Moon]:
    world = Moon(nc, space, trust=Trust(audience=key("moon").did, keys=WORLD.trust.keys,
                                        roots=WORLD.trust.roots | {key("root").did}))
    async with world.gate.serving():
        yield world


async def test_deep_nesting_through_the_gate_is_answered_audited_and_the_gate_serves_on(
    moon: Moon, nc: Nats, js: JetStreamContext, space: Space
) -> None:
    data = signed(payload(body=DEEP))
    msg = await nc.request(space.subject("map.moon.dispatch"), data, timeout=3)
    response = open_response(msg.data, issuer=moon.service.did, keys=moon.trust.keys,
                             caller=WORLD.caller.did, request_id="r-1", request=data)
    assert isinstance(response, Response), response
    assert response.refusal is not None
    assert response.refusal.reason is Reason.MALFORMED
    [record] = await audit_records(js, space)
    assert record.reason is Reason.MALFORMED
    assert isinstance(await moon.client.call("moon.dispatch", BODY), Reply)
