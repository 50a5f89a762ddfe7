"""kill -9 the broker after acknowledged appends, restart it on the same store: nothing is lost."""

from __future__ import annotations

import pytest

from streams.broker import EmbeddedBroker, open_connection
from streams.config import Topology, ensure_streams
from streams.jetstream_store import JetStreamStore
from streams.store import Appended
from streams.subjects import Space

from .sample import CODEC, Added, Batch, layout


@pytest.mark.parametrize("rounds", [3])
async def test_every_acknowledged_append_survives_kill_9(broker: EmbeddedBroker, rounds: int):
    acknowledged: list[tuple[int, Batch]] = []
    version = 0
    for round_ in range(rounds):
        nc = await open_connection(broker.url)
        js = nc.jetstream()
        await ensure_streams(js, Topology(space=Space()))
        store = JetStreamStore(js, layout("", "MOON"), CODEC)
        for i in range(200):
            value = Batch(command=f"r{round_}-{i}", events=[Added(i)])
            outcome = await store.append("w", value, expected=version, key=value.command,
                                         kind="added")
            assert isinstance(outcome, Appended)
            version = outcome.seq
            acknowledged.append((outcome.seq, value))
        broker.kill()  # no flush, no goodbye
        await nc.close()
        broker.start()  # same port, same store dir
    nc = await open_connection(broker.url)
    store = JetStreamStore(nc.jetstream(), layout("", "MOON"), CODEC)
    loaded = await store.read("w")
    assert [(i.seq, i.value) for i in loaded.items] == acknowledged
    await nc.close()
