"""One contract, every EventStore: the same tests run on the memory twin and on JetStream."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from streams.broker import open_connection
from streams.codec import Undecodable
from streams.config import MOON, Topology, ensure_streams
from streams.jetstream_store import JetStreamStore
from streams.replies import Conflict
from streams.store import Appended, MemoryStore, Stored

from .sample import CODEC, Added, Batch, Reset, layout

_keys = itertools.count()


def key() -> str:
    return f"cmd-{next(_keys)}"


def batch(*ns: int) -> Batch:
    return Batch(command="c", events=[Added(n) for n in ns])


@pytest.fixture(params=["memory", "jetstream"])
async def store(request, space):
    if request.param == "memory":
        yield MemoryStore(layout("", "MOON"), CODEC)
        return
    # Only the JetStream twin needs a server: the memory contract runs without one.
    nc = await open_connection(request.getfixturevalue("nats_url"))
    js = nc.jetstream()
    await ensure_streams(js, Topology(space=space, streams=(MOON,), buckets=()))
    yield JetStreamStore(js, layout(space.prefix, space.stream("MOON")), CODEC)
    await nc.close()


async def test_an_append_at_the_right_version_lands_and_reads_back(store):
    first = await store.append("a", batch(1, 2), expected=0, key=key(), kind="added")
    assert isinstance(first, Appended)
    second = await store.append("a", batch(3), expected=first.seq, key=key(), kind="added")
    assert isinstance(second, Appended)
    loaded = await store.read("a")
    assert loaded.version == second.seq
    assert [item.value for item in loaded.items] == [batch(1, 2), batch(3)]


async def test_a_stale_writer_gets_a_conflict_with_the_actual_version(store):
    first = await store.append("a", batch(1), expected=0, key=key(), kind="added")
    assert await store.append("a", batch(2), expected=0, key=key(), kind="added") == Conflict(
        actual=first.seq
    )
    assert [i.value for i in (await store.read("a")).items] == [batch(1)]


async def test_aggregates_are_versioned_independently_across_kinds(store):
    a1 = await store.append("a", batch(1), expected=0, key=key(), kind="added")
    b1 = await store.append("b", batch(1), expected=0, key=key(), kind="added")
    a2 = await store.append("a", batch(2), expected=a1.seq, key=key(), kind="other.kind")
    assert isinstance(a2, Appended)
    assert isinstance(b1, Appended)
    assert (await store.read("a")).version == a2.seq
    assert (await store.read("b")).version == b1.seq


async def test_the_same_command_id_twice_stores_one_message(store):
    k = key()
    first = await store.append("a", batch(1), expected=0, key=k, kind="added")
    again = await store.append("a", batch(1), expected=0, key=k, kind="added")
    assert again == Appended(seq=first.seq, duplicate=True)
    assert len((await store.read("a")).items) == 1


async def test_a_new_key_at_a_taken_position_conflicts(store):
    first = await store.append("a", batch(1), expected=0, key=key(), kind="added")
    assert await store.append("a", batch(2), expected=0, key=key(), kind="added") == Conflict(
        actual=first.seq
    )


async def test_read_is_bounded_by_after_and_upto(store):
    seqs = []
    version = 0
    for n in range(1, 6):
        appended = await store.append("a", batch(n), expected=version, key=key(), kind="added")
        version = appended.seq
        seqs.append(version)
    middle = await store.read("a", after=seqs[0], upto=seqs[3])
    assert [i.seq for i in middle.items] == seqs[1:4]
    assert middle.version == seqs[3]
    assert (await store.read("a", after=seqs[-1])).items == []
    upto = await store.read("a", upto=seqs[2])
    assert [i.value for i in upto.items] == [batch(1), batch(2), batch(3)]


async def test_two_writers_racing_100_times_one_wins_each_race(store):
    version = 0
    wins = 0
    for race in range(100):
        outcomes = await asyncio.gather(
            store.append("r", batch(race), expected=version, key=key(), kind="added"),
            store.append("r", batch(race), expected=version, key=key(), kind="added"),
        )
        won = [o for o in outcomes if isinstance(o, Appended)]
        lost = [o for o in outcomes if isinstance(o, Conflict)]
        assert len(won) == 1
        assert len(lost) == 1
        assert lost[0].actual == won[0].seq
        version = won[0].seq
        wins += 1
    loaded = await store.read("r")
    assert [i.value for i in loaded.items] == [batch(r) for r in range(100)]
    assert wins == 100


async def _take(it: AsyncIterator[Stored[Batch] | Undecodable], n: int) -> list:
    out = []
    async for item in it:
        out.append(item)
        if len(out) == n:
            break
    return out


async def test_subscribe_from_a_sequence_sees_every_later_event_once_in_order(store):
    version = 0
    seqs = []
    for n in range(10):
        appended = await store.append("s", batch(n), expected=version, key=key(), kind="added")
        version = appended.seq
        seqs.append(version)
    filter_ = store.layout.filter("s")
    reader = asyncio.ensure_future(_take(store.subscribe(filter_, from_seq=seqs[4]), 8))
    for n in range(10, 13):
        appended = await store.append("s", batch(n), expected=version, key=key(), kind="added")
        version = appended.seq
    got = await asyncio.wait_for(reader, 10)
    assert [g.value for g in got] == [batch(n) for n in range(4, 12)]
    assert [g.seq for g in got] == sorted({g.seq for g in got})


async def test_a_reset_event_round_trips(store):
    appended = await store.append(
        "z", Batch(command="c", events=[Added(1), Reset()]), expected=0, key=key(), kind="reset"
    )
    assert appended.seq > 0
    assert (await store.read("z")).items[0].value.events == [Added(1), Reset()]
