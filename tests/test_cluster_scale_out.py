"""Scale-out on the 3-node cluster: two engines, each on a different node, share the work of
one pool (one MOON_CMD durable, one report queue group, R3 streams) without a lost or doubled
decision.

What the one-broker test (tests/moon/test_scale_out.py) shows, across nodes: the engines race
inside each workflow (a dispatch sent to both at once, a chain's reports answered by either,
with eager hand-offs in their answers, retry timers taken by either), each engine's cache is
often behind the journal, and the journal's optimistic concurrency, now replicated, decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter

import pytest
from nats.aio.client import Client

from moon import replay
from moon.engine import Engine
from moon.service import running
from moon.worker import Result, StepContext, Worker
from streams.broker import open_connection
from streams.cluster import EmbeddedCluster
from streams.config import Topology, ensure_streams
from streams.subjects import Space

from . import walls as tw
from .moon.test_scale_out import (
    Appends,
    assert_shared_and_raced,
    chains_and_diamonds,
    completions,
    doubled,
    submit_to_both,
    watched_engine,
)
from .test_cluster import assert_replicated, decoded, journals, rotated

WORKFLOWS_N = 40
FLAKY_EVERY = 5  # in every 5th workflow step b fails its first attempt: a timer retries it


def engine_on_node(cluster: EmbeddedCluster, node: int, space: Space, name: str,
                   appends: Appends) -> contextlib.AbstractAsyncContextManager[Engine]:
    """An engine as its own process would run: the engine role's rights, connected to `node`
    first (the others only to fail over to)."""
    async def connect() -> Client:
        return await open_connection(rotated(cluster.urls, node), name=f"engine-{name}",
                                     dont_randomize=True, role="engine",
                                     credentials_file=cluster.seed("engine"))

    return watched_engine(connect, space, name, appends)


@pytest.mark.slow
async def test_two_engines_on_two_nodes_share_the_work_without_a_lost_or_doubled_decision(
    cluster: EmbeddedCluster, space: Space
):
    rng = random.Random(7)
    runs: Counter[str] = Counter()
    admin = await open_connection(cluster.urls, name="cluster-scale-out",
                                  credentials_file=cluster.seed("admin"))
    js = admin.jetstream()
    await ensure_streams(js, Topology(space=space, replicas=3))

    async def work(ctx: StepContext) -> Result:
        runs[ctx.key] += 1
        await asyncio.sleep(rng.uniform(0, 0.01))
        if ctx.key in flaky:
            raise RuntimeError("first attempt fails")
        return Result(output=ctx.order.step.encode(), tokens=1)

    commands = chains_and_diamonds(WORKFLOWS_N)
    flaky = {f"{c.workflow_id}/b/1" for c in commands[::FLAKY_EVERY]}
    pool: list[Client] = []
    appends = Appends()
    try:
        workers = []
        for i in range(2):  # the pool on the third node, failing over to the others
            role = await asyncio.to_thread(cluster.provision_executor, f"x{i}", ["work"])
            nc = await open_connection(rotated(cluster.urls, 2), name=f"x{i}", role=role,
                                       dont_randomize=True, credentials_file=cluster.seed(role))
            pool.append(nc)
            workers.append(Worker(nc, executor_id=f"x{i}", handlers={"work": work}, space=space,
                                  capacity=16, engines=tw.trust_for(space).engines,
                                  signer=await tw.executor(js, space, f"x{i}", ["work"]),
                                  to_sender=False))  # to either engine: they interleave
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(engine_on_node(cluster, 0, space, "A", appends))
            b = await stack.enter_async_context(engine_on_node(cluster, 1, space, "B", appends))
            for w in workers:
                await stack.enter_async_context(
                    running(lambda ready, w=w: w.run(ready=ready), w.stop))
            all_done = await stack.enter_async_context(
                completions(admin, space, {c.workflow_id for c in commands}))
            await assert_replicated(js, space)
            await submit_to_both(a, b, commands)
            await asyncio.wait_for(all_done.wait(), 60)
            stats = {"A": vars(a.stats), "B": vars(b.stats)}
        assert_shared_and_raced(stats, appends, WORKFLOWS_N)
        done = await journals(js, space)
        for command in commands:
            wf = command.workflow_id
            decisions = decoded(done[wf], space)
            final = replay.fold(decisions)
            assert final.status == "completed", (wf, final.status)
            assert replay.verify(decisions) == [], wf
            assert doubled(decisions) == [], wf
            for name, state in final.steps.items():  # each attempt ran once; retried if flaky
                want = 2 if f"{wf}/{name}/1" in flaky else 1
                assert state.attempt == want, (wf, name, state.attempt)
                assert all(runs[f"{wf}/{name}/{n}"] == 1 for n in range(1, want + 1)), wf
        assert sum(runs.values()) == sum(len(c.steps) for c in commands) + len(flaky)
    finally:
        for nc in [admin, *pool]:
            await nc.close()
