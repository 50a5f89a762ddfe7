"""Scale-out: two engines, each on its own connection, share one broker's work (one MOON_CMD
durable, one report queue group) without a lost or doubled decision.

The engines interleave inside each workflow: a dispatch decided by one, its steps' start and
completion reports taken by whichever engine the queue group picks (the workers here do not
address them to the order's sender, as after that engine's death), so each engine's cached
state is often behind the journal and the journal's optimistic concurrency decides who wins.
Some dispatches are submitted to both engines at once, racing for the same first decision;
some steps fail once, so their retry timers fire on MOON_CMD and either engine takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from moon import replay
from moon.engine import Engine, WorkflowSummary
from moon.service import running
from moon.worker import Result, StepContext
from streams.broker import open_connection
from streams.config import WORKFLOWS
from streams.decider import Decided
from streams.moon_events import Decision, Dispatch, StepCompleted, StepScheduled, StepStarted
from streams.replies import Conflict
from streams.store import Appended
from streams.subjects import Space

from . import fault_world as fw
from .engine_world import dispatch, new_engine, step, worker

WORKFLOWS_N = 40
RACED = 8  # of which this many are submitted to both engines at once
FANS, FAN_OUT = 3, 12  # and a few workflows whose 12 middle steps run at once
FLAKY_EVERY = 5  # in every 5th workflow step b fails its first attempt and is retried


class Appends:
    """What each engine's journal appends came to: which engine wrote which workflow, and how
    often it lost the optimistic race (a Conflict) or found its decision already there."""

    def __init__(self) -> None:
        self.writers: dict[str, set[str]] = {}
        self.outcomes: Counter[str] = Counter()

    def watch(self, name: str, eng: Engine) -> None:
        store = eng.runner.store
        append = store.append

        async def counted(aggregate: str, value: Decision, **options: object) -> object:
            outcome = await append(aggregate, value, **options)  # type: ignore[arg-type]
            match outcome:
                case Conflict():
                    self.outcomes[f"{name}:conflict"] += 1
                case Appended(duplicate=True):
                    self.outcomes[f"{name}:duplicate"] += 1
                case Appended():
                    self.outcomes[f"{name}:appended"] += 1
                    self.writers.setdefault(aggregate, set()).add(name)
            return outcome

        store.append = counted  # type: ignore[method-assign]


def engine_on_own_connection(url: str, space: Space, name: str,
                             appends: Appends) -> contextlib.AbstractAsyncContextManager[Engine]:
    async def connect() -> Client:
        return await open_connection(url, name=f"scale-out-{name}")

    return watched_engine(connect, space, name, appends)


@contextlib.asynccontextmanager
async def watched_engine(connect: Callable[[], Awaitable[Client]], space: Space, name: str,
                         appends: Appends) -> AsyncIterator[Engine]:
    """A running engine on a connection of its own (closed after it), its appends watched."""
    conn = await connect()
    try:
        eng = await new_engine(conn, space)
        appends.watch(name, eng)
        try:
            async with running(lambda ready: eng.run(ready=ready), eng.stop):
                yield eng
        finally:
            await eng.registry.stop()
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def completions(nc: Client, space: Space, expected: set[str]) -> AsyncIterator[
        asyncio.Event]:
    """Set once every expected workflow's `completed` decision is on the journal."""
    missing = set(expected)
    all_done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        missing.discard(space.unprefix(msg.subject).split(".")[2])
        if not missing:
            all_done.set()

    sub = await nc.subscribe(space.subject("moon.wf.*.completed"), cb=on_msg)
    try:
        yield all_done
    finally:
        await sub.unsubscribe()


def doubled(decisions: list[Decision]) -> list[str]:
    """Anything decided twice: a command id journaled twice, a step scheduled or started
    twice for the same attempt, a step completed twice."""
    out = []
    ids = Counter(d.command.command_id for d in decisions)
    out += [f"command {c} journaled {n}x" for c, n in ids.items() if n > 1]
    for kind in (StepScheduled, StepStarted):
        seen = Counter((e.step, e.attempt) for d in decisions for e in d.events
                       if isinstance(e, kind))
        out += [f"{kind.__name__} {k} {n}x" for k, n in seen.items() if n > 1]
    completed = Counter(e.step for d in decisions for e in d.events
                        if isinstance(e, StepCompleted))
    out += [f"step {k} completed {n}x" for k, n in completed.items() if n > 1]
    return out


def chains_and_diamonds(n: int) -> list[Dispatch]:
    """Every other workflow a 3-step chain, the rest diamonds (two completions of one workflow
    in flight at once): the mix both scale-out tests share."""
    commands = []
    for i in range(n):
        if i % 2:
            steps = [step("a"), step("b", needs=("a",)), step("c", needs=("b",))]
        else:
            steps = [step("a"), step("b", needs=("a",)), step("c", needs=("a",)),
                     step("d", needs=("b", "c"))]
        commands.append(dispatch(steps))
    return commands


async def submit_to_both(a: Engine, b: Engine, commands: list[Dispatch]) -> None:
    """The first RACED dispatches to both engines at once, the rest to one or the other."""
    submitted = []
    for i, command in enumerate(commands):
        if i < RACED:  # both engines decide the same dispatch at once
            submitted += await asyncio.gather(a.submit(command), b.submit(command))
        else:
            submitted.append(await (a if i % 2 else b).submit(command))
    assert all(isinstance(s, Decided) for s in submitted), submitted


def assert_shared_and_raced(stats: dict[str, dict[str, int]], appends: Appends, n: int) -> None:
    # Both engines decided, and inside the same workflows: the work was shared, not split.
    assert stats["A"]["decisions"] > 0 and stats["B"]["decisions"] > 0, stats
    shared = [wf for wf, names in appends.writers.items() if names == {"A", "B"}]
    assert len(shared) >= n // 4, (appends.outcomes, stats)
    # ... and raced: some appends lost to the other engine's (a Conflict, re-decided on the
    # newer state) or found the same command already journaled by it.
    lost = sum(k for name, k in appends.outcomes.items() if not name.endswith(":appended"))
    assert lost > 0, appends.outcomes


async def test_two_engines_share_the_work_without_a_lost_or_doubled_decision(
    nats_url, nc, js, space
):
    rng = random.Random(11)
    runs: Counter[str] = Counter()

    async def work(ctx: StepContext) -> Result:
        runs[ctx.key] += 1
        await asyncio.sleep(rng.uniform(0, 0.01))
        if ctx.key in flaky:  # its retry is a timer on MOON_CMD, taken by either engine
            raise RuntimeError("first attempt fails")
        return Result(output=ctx.order.step.encode(), tokens=1)

    commands = chains_and_diamonds(WORKFLOWS_N)
    for _ in range(FANS):  # many completions of one workflow at once: the engines contend
        fan = [step(f"f{k}", needs=("a",)) for k in range(FAN_OUT)]
        commands.append(dispatch([step("a"), *fan,
                                  step("z", needs=tuple(f.id for f in fan))]))
    flaky = {f"{c.workflow_id}/b/1" for c in commands[:WORKFLOWS_N:FLAKY_EVERY]}
    appends = Appends()
    workers_nc = await open_connection(nats_url, name="scale-out-workers")
    try:
        async with (engine_on_own_connection(nats_url, space, "A", appends) as a,
                    engine_on_own_connection(nats_url, space, "B", appends) as b,
                    # to any engine (not the order's sender): the engines interleave
                    worker(workers_nc, space, {"work": work}, "x1", capacity=16,
                           to_sender=False),
                    worker(workers_nc, space, {"work": work}, "x2", capacity=16,
                           to_sender=False),
                    completions(nc, space, {c.workflow_id for c in commands}) as all_done):
            await submit_to_both(a, b, commands)
            await asyncio.wait_for(all_done.wait(), 30)
            stats = {"A": vars(a.stats), "B": vars(b.stats)}
    finally:
        await workers_nc.close()

    assert_shared_and_raced(stats, appends, WORKFLOWS_N)

    index = await js.key_value(space.bucket(WORKFLOWS.name))
    for command in commands:
        wf = command.workflow_id
        decisions = await fw.decisions(js, space, wf)
        final = replay.fold(decisions)
        assert final.status == "completed", (wf, final.status)
        assert replay.verify(decisions) == [], wf
        assert doubled(decisions) == [], wf
        assert sum(isinstance(d.command, type(command)) for d in decisions) == 1, wf
        for name, state in final.steps.items():  # each attempt ran once; retried if flaky
            want = 2 if f"{wf}/{name}/1" in flaky else 1
            assert state.attempt == want, (wf, name, state.attempt)
            assert all(runs[f"{wf}/{name}/{n}"] == 1 for n in range(1, want + 1)), (wf, runs)
        # The index follows the journal to its end whichever engine wrote last.
        entry = msgspec.json.decode((await index.get(wf)).value, type=WorkflowSummary)
        rows = await fw.raw_journal(js, space, wf)
        assert (entry.status, entry.version) == ("completed", rows[-1][0]), (wf, entry)
    assert sum(runs.values()) == sum(len(c.steps) for c in commands) + len(flaky)
