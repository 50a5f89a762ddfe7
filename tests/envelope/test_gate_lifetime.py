"""The gate keeps serving through what a running broker does to it, and a gate that stops
anyway takes its process down with it: a service whose gate died must not go on running where
no request reaches it (seen on a 3-node cluster: a fetch of intents answered 503 while the
consumer's leader was elected ended one engine's gate, and that engine took no request again).
"""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from envelope.client import Reply
from envelope.gate import INTENTS_STREAM, GateStopped
from envelope.seal import Opened
from streams.replies import Refusal
from streams.subjects import Space

from .test_gate import BODY, Dispatched, Moon


class Watched(Moon):
    """The toy service, saying when its handler has run."""

    def __init__(self, nc: Nats, space: Space) -> None:
        super().__init__(nc, space)
        self.ran = asyncio.Event()

    async def dispatch(self, opened: Opened) -> Dispatched | Refusal:
        try:
            return await super().dispatch(opened)
        finally:
            self.ran.set()


async def test_intents_are_served_again_after_their_consumer_is_deleted(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    moon = Watched(nc, space)
    async with moon.gate.serving():
        await js.delete_consumer(space.stream(INTENTS_STREAM), space.consumer("moon_dispatch"))
        await moon.client.publish_intent("moon.dispatch", BODY)
        await asyncio.wait_for(moon.ran.wait(), 15)  # the consumer made again, the intent run
        answer = await moon.client.call("moon.dispatch", {**BODY, "intent": "and a request"})
        assert isinstance(answer, Reply), answer
    assert moon.runs == 2


async def test_a_gate_that_stops_ends_its_serving_block_with_the_reason(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    moon = Watched(nc, space)
    stop = asyncio.Event()

    async def consume(*_: object) -> None:
        await stop.wait()
        raise ConnectionError("the consumer is gone for good")

    moon.gate._consume = consume  # type: ignore[method-assign]
    with pytest.raises(GateStopped, match=r"gate stopped: .*the consumer is gone for good"):
        async with moon.gate.serving():
            stop.set()
            await asyncio.wait_for(asyncio.Event().wait(), 10)  # the process's own work


async def test_a_block_that_ends_first_stops_its_gate_quietly(
    nc: Nats, js: JetStreamContext, space: Space
) -> None:
    moon = Watched(nc, space)
    async with moon.gate.serving():
        answer = await moon.client.call("moon.dispatch", BODY)
        assert isinstance(answer, Reply), answer
    assert not moon.gate.ready.is_set()
