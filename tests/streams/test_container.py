"""The store contract's core on a containerised nats-server, when Docker is usable."""

from __future__ import annotations

from streams.broker import open_connection
from streams.config import MOON, Topology, ensure_streams
from streams.jetstream_store import JetStreamStore
from streams.replies import Conflict
from streams.subjects import Space

from .sample import CODEC, Added, Batch, layout


async def test_occ_and_dedupe_hold_on_a_container_server(container_nats_url):
    nc = await open_connection(container_nats_url)
    js = nc.jetstream()
    await ensure_streams(js, Topology(space=Space("box"), streams=(MOON,), buckets=()))
    store = JetStreamStore(js, layout("box", "box_MOON"), CODEC)
    first = await store.append("a", Batch("c", [Added(1)]), expected=0, key="k1", kind="x")
    assert await store.append("a", Batch("c", [Added(2)]), expected=0, key="k2",
                              kind="x") == Conflict(actual=first.seq)
    await nc.close()
