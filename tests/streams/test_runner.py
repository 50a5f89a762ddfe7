"""The decider runner and snapshots: folding live equals re-reading, with or without snapshots."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.broker import open_connection
from streams.config import MOON, SNAPSHOTS, Topology, ensure_streams
from streams.decider import Contention, Decided, Decider, Runner
from streams.jetstream_store import JetStreamStore
from streams.replies import Conflict, Reason, Refusal
from streams.snapshots import KvSnapshots, MemorySnapshots, schema_stamp
from streams.store import Appended, MemoryStore

from .sample import CODEC, Added, Batch, Event, Reset, evolve, layout


def decide(command: str, total: int) -> list[Event] | Refusal:
    verb, _, arg = command.partition(":")
    if verb == "add":
        return [Added(int(arg))]
    if verb == "reset":
        return [Reset()] if total else []
    return Refusal(Reason.MALFORMED, command)


COUNTER = Decider(decide=decide, evolve=evolve, initial=0)
_ids = itertools.count()


def pack(command: str, events: Sequence[Event]) -> Batch:
    return Batch(command=command, events=list(events))


def runner(store, snapshots=None, every=3):
    return Runner(
        decider=COUNTER, store=store, pack=pack, apply=lambda s, b: COUNTER.fold(b.events, s),
        kind=lambda events: "reset" if any(isinstance(e, Reset) for e in events) else "added",
        snapshots=snapshots, snapshot_every=every,
    )


def memory():
    return MemoryStore(layout("", "MOON"), CODEC)


async def test_a_refusal_appends_nothing():
    store = memory()
    assert await runner(store).handle("a", "bogus", key="k1") == Refusal(
        Reason.MALFORMED, "bogus"
    )
    assert (await store.read("a")).items == []


async def test_an_empty_decision_appends_nothing():
    store = memory()
    outcome = await runner(store).handle("a", "reset", key="k1")
    assert isinstance(outcome, Decided)
    assert outcome.events == []
    assert (await store.read("a")).items == []


async def test_a_stale_runner_rereads_and_redecides_after_a_conflict():
    store = memory()
    one, two = runner(store), runner(store)
    await one.handle("a", "add:1", key="k1")
    await two.load("a")  # two caches version 1
    await one.handle("a", "add:2", key="k2")
    outcome = await two.handle("a", "add:3", key="k3")
    assert isinstance(outcome, Decided)
    assert outcome.state == 6


class AlwaysLosing(MemoryStore):
    async def append(self, aggregate, value, *, expected, key, kind):
        return Conflict(actual=expected + 1)


async def test_persistent_contention_is_a_typed_error():
    with pytest.raises(Contention):
        await runner(AlwaysLosing(layout("", "MOON"), CODEC)).handle("a", "add:1", key="k")


async def test_a_resent_command_is_reported_as_a_duplicate_and_stored_once():
    store = memory()
    await runner(store).handle("a", "add:5", key="same")
    outcome = await runner(store).handle("a", "add:5", key="same")
    assert isinstance(outcome, Decided)
    assert outcome.duplicate
    assert outcome.state == 5
    assert len((await store.read("a")).items) == 1


async def test_a_snapshot_from_other_code_is_ignored():
    store = memory()
    snaps = MemorySnapshots(int, schema_stamp(int, 1))
    await runner(store, snaps, every=1).handle("a", "add:4", key="k1")
    stale = MemorySnapshots(int, schema_stamp(int, 2), data=dict(snaps.data))
    assert await stale.load("a") is None
    assert (await snaps.load("a")).state == 4


commands = st.lists(
    st.one_of(st.integers(-50, 50).map(lambda n: f"add:{n}"), st.just("reset")), max_size=25
)


async def _live_and_reread(store, snaps, cmds):
    live = runner(store, snaps)
    agg = f"p{next(_ids)}"
    state = 0
    for cmd in cmds:
        outcome = await live.handle(agg, cmd, key=f"k{next(_ids)}")
        assert isinstance(outcome, Decided)
        state = outcome.state
    cold = runner(store, snaps)
    _, reread = await cold.load(agg, use_cache=False)
    unsnapped = runner(store, None)
    _, from_scratch = await unsnapped.load(agg, use_cache=False)
    return state, reread, from_scratch


@settings(max_examples=40, deadline=None)
@given(cmds=commands, snapshot=st.booleans())
def test_any_appends_folded_live_or_reread_give_equal_states_in_memory(cmds, snapshot):
    store = memory()
    snaps = MemorySnapshots(int, schema_stamp(int, 1)) if snapshot else None
    live, reread, scratch = asyncio.run(_live_and_reread(store, snaps, cmds))
    assert live == reread == scratch == _expected(cmds)


def _expected(cmds):
    total = 0
    for cmd in cmds:
        total = 0 if cmd == "reset" else total + int(cmd.split(":")[1])
    return total


@pytest.fixture
async def jetstream(nats_url, space):
    nc = await open_connection(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, Topology(space=space, streams=(MOON,), buckets=(SNAPSHOTS,)))
    store = JetStreamStore(js, layout(space.prefix, space.stream("MOON")), CODEC)
    snaps = KvSnapshots(js, space.bucket(SNAPSHOTS.name), int, schema_stamp(int, 1))
    yield store, snaps
    await nc.close()


@settings(
    max_examples=15, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cmds=commands, snapshot=st.booleans())
async def test_any_appends_folded_live_or_reread_give_equal_states_on_jetstream(
    jetstream, cmds, snapshot
):
    store, snaps = jetstream
    live, reread, scratch = await _live_and_reread(store, snaps if snapshot else None, cmds)
    assert live == reread == scratch == _expected(cmds)


async def test_deleting_every_snapshot_changes_no_answer(jetstream):
    store, snaps = jetstream
    live = runner(store, snaps, every=2)
    for n in range(7):
        await live.handle("d", f"add:{n}", key=f"d{n}-{next(_ids)}")
    assert (await snaps.load("d")) is not None
    _, with_snap = await runner(store, snaps).load("d", use_cache=False)
    await snaps.delete_all()
    assert await snaps.load("d") is None
    _, without = await runner(store, snaps).load("d", use_cache=False)
    assert with_snap == without == sum(range(7))


async def test_the_appended_value_is_in_the_store():
    store = memory()
    outcome = await runner(store).handle("x", "add:2", key="kx")
    assert isinstance(outcome, Decided)
    assert await store.append("x", pack("add:2", [Added(2)]), expected=0, key="kx",
                              kind="added") == Appended(seq=outcome.version, duplicate=True)


async def test_the_cache_is_bounded_and_an_evicted_aggregate_folds_back_the_same():
    store = memory()
    live = runner(store)
    live.cache_size = 2
    for agg, n in (("a", 1), ("b", 2), ("c", 3)):
        await live.handle(agg, f"add:{n}", key=f"{agg}-1")
    assert list(live.cache) == ["b", "c"]  # "a" was least recently used
    outcome = await live.handle("a", "add:10", key="a-2")
    assert isinstance(outcome, Decided)
    assert outcome.state == 11
    assert list(live.cache) == ["c", "a"]
