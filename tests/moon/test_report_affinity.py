"""Reports go back to the engine process that sent the order (moon/worker.py `request`): with
two engines a chain stays with the engine whose cache holds it, instead of each engine deciding
on a state the other has moved on from (a lost optimistic race, a re-read, a decision again).
When that engine has gone, the report reaches nobody there (no responders) and goes to any
engine: the chain goes on, nothing decided twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from moon import replay
from moon.reports import parse_report_subject
from moon.worker import Result, StepContext
from streams import subjects
from streams.broker import open_connection
from streams.moon_events import Dispatch
from streams.subjects import Space

from . import fault_world as fw
from .engine_world import dispatch, step, worker
from .test_scale_out import Appends, completions, doubled, engine_on_own_connection

CHAINS = 12


def chains(n: int) -> list[Dispatch]:
    return [dispatch([step("a"), step("b", needs=("a",)), step("c", needs=("b",))])
            for _ in range(n)]


def matches(filter_: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    want, got = filter_.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or token not in ("*", got[i]):
            return False
    return len(got) == len(want)


def test_a_report_addressed_to_one_engine_reaches_it_alone():
    shared = subjects.report("x1", "wf1", "complete_step")
    addressed = subjects.report("x1", "wf1", "complete_step", engine="e1")
    space = Space()
    assert parse_report_subject(space, shared) == ("x1", "wf1", "complete_step")
    assert parse_report_subject(space, addressed) == ("x1", "wf1", "complete_step")
    # The engines' queue group takes the shared subject only; each engine its own address.
    assert matches(subjects.reports(), shared) and not matches(subjects.reports(), addressed)
    assert matches(subjects.reports_to("e1"), addressed)
    assert not matches(subjects.reports_to("e2"), addressed)
    assert not matches(subjects.reports_to("e1"), shared)


async def test_each_chain_is_decided_by_the_engine_that_took_its_dispatch(
    nats_url, nc, js, space
):
    runs: Counter[str] = Counter()

    async def work(ctx: StepContext) -> Result:
        runs[ctx.key] += 1
        return Result(output=ctx.order.step.encode(), tokens=1)

    commands = chains(CHAINS)
    appends = Appends()
    workers_nc = await open_connection(nats_url, name="affinity-workers")
    try:
        async with (engine_on_own_connection(nats_url, space, "A", appends) as a,
                    engine_on_own_connection(nats_url, space, "B", appends) as b,
                    worker(workers_nc, space, {"work": work}, "x1", capacity=8),
                    worker(workers_nc, space, {"work": work}, "x2", capacity=8),
                    completions(nc, space, {c.workflow_id for c in commands}) as all_done):
            owner = {}
            for i, command in enumerate(commands):
                engine, name = (a, "A") if i % 2 else (b, "B")
                await engine.submit(command)
                owner[command.workflow_id] = name
            await asyncio.wait_for(all_done.wait(), 30)
    finally:
        await workers_nc.close()

    # Every decision of a chain by the engine that dispatched it, none lost to the other.
    assert {wf: appends.writers[wf] for wf in owner} == {wf: {n} for wf, n in owner.items()}
    assert not [k for k in appends.outcomes if not k.endswith(":appended")], appends.outcomes
    assert set(runs.values()) == {1} and len(runs) == 3 * CHAINS


async def test_when_the_sender_has_gone_its_reports_go_to_another_engine(
    nats_url, nc, js, space
):
    runs: Counter[str] = Counter()
    running = asyncio.Event()
    release = asyncio.Event()
    commands = chains(CHAINS // 2)

    async def work(ctx: StepContext) -> Result:
        runs[ctx.key] += 1
        if ctx.order.step == "a":  # every chain's first step holds until engine A has gone
            if sum(k.endswith("/a/1") for k in runs) == len(commands):
                running.set()
            await release.wait()
        return Result(output=ctx.order.step.encode(), tokens=1)

    appends = Appends()
    workers_nc = await open_connection(nats_url, name="affinity-workers")
    try:
        async with (engine_on_own_connection(nats_url, space, "B", appends),
                    worker(workers_nc, space, {"work": work}, "x1", capacity=8),
                    completions(nc, space, {c.workflow_id for c in commands}) as all_done):
            async with contextlib.AsyncExitStack() as first:
                a = await first.enter_async_context(
                    engine_on_own_connection(nats_url, space, "A", appends))
                for command in commands:
                    await a.submit(command)
                await asyncio.wait_for(running.wait(), 20)
            # A has stopped and closed its connection: the reports it is owed go to B.
            release.set()
            await asyncio.wait_for(all_done.wait(), 30)
    finally:
        await workers_nc.close()

    for command in commands:
        wf = command.workflow_id
        decisions = await fw.decisions(js, space, wf)
        assert replay.fold(decisions).status == "completed", wf
        assert replay.verify(decisions) == [] and doubled(decisions) == [], wf
        assert appends.writers[wf] == {"A", "B"}, (wf, appends.writers[wf])
    assert set(runs.values()) == {1} and len(runs) == 3 * len(commands)
