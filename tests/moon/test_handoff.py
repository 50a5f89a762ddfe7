"""Eager dispatch (moon/handoff.py): a completion's answer carries the next order to its sender,
who alone may take it; everything else still goes through WORK."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from envelope.registry import Registration
from moon.handoff import pick
from moon.reports import Report, ReportReply
from moon.worker import Result, StepContext
from streams.moon_events import StepTimedOut, WorkOrder

from . import fault_world as fw
from .engine_world import dispatch, engine, orders_stored, step, worker
from .test_faults import FAST_RETRY, check_journal, events_of


def _order(step: str, capability: str = "work", executor: str | None = None) -> WorkOrder:
    return WorkOrder(workflow_id="wf", step=step, attempt=1, capability=capability,
                     executor=executor, deadline_ms=1, timeout_ms=1, idempotency_key=f"wf/{step}/1")


def test_only_an_order_the_reporter_offered_serves_and_is_not_someone_elses_is_picked():
    x1 = Registration(executor="x1", did="did:x1", capabilities=("work", "sum"))
    theirs, other_cap, unserved = _order("a", executor="x2"), _order("b", "sum"), _order("c", "img")
    assert pick([theirs, other_cap, unserved], x1, {"work", "img"}) is None
    mine, pool = _order("d", executor="x1"), _order("e")
    assert pick([theirs, mine, pool], x1, {"work"}) is mine
    assert pick([theirs, pool], x1, {"work"}) is pool
    anything = Registration(executor="x1", did="did:x1")  # no capabilities listed: serves all
    assert pick([unserved], anything, {"img"}) is unserved


async def _chain(eng, steps: int = 3) -> str:  # type: ignore[no-untyped-def]
    names = [f"s{i}" for i in range(steps)]
    command = dispatch([step(n, needs=(names[i - 1],) if i else ()) for i, n in enumerate(names)])
    await eng.submit(command)
    assert (await eng.wait_terminal(command.workflow_id, 30)).status == "completed"
    return command.workflow_id


async def test_a_chain_stores_only_its_first_order_and_runs_every_step_once(nc, js, space):
    runs: Counter[str] = Counter()

    async def work(ctx: StepContext) -> Result:
        runs[ctx.key] += 1
        return Result(output=ctx.order.step.encode())

    async with engine(nc, space) as eng:
        async with worker(nc, space, {"work": work}):
            eager = await _chain(eng)
        stored = orders_stored(await js.stream_info(space.stream("WORK")), eng)
        async with worker(nc, space, {"work": work}, executor_id="x2", eager=False):
            plain = await _chain(eng)
        through_work = orders_stored(await js.stream_info(space.stream("WORK")), eng) - stored
    assert (stored, through_work) == (1, 3)  # s1's and s2's orders came in the answers
    assert eng.stats.handed == 2
    assert runs == Counter({f"{wf}/s{i}/1": 1 for wf in (eager, plain) for i in range(3)})


async def test_an_offer_for_a_capability_the_registration_lacks_leaves_the_order_in_work(
    nc, js, space
):
    """x1 is registered for `work` alone, yet its completion of s0 offers to take `sum` too.
    s1 needs `sum`: its order goes to WORK for whoever is registered for it, not to x1."""
    async def work(ctx: StepContext) -> Result:
        return Result(output=b"s0")

    answered: asyncio.Future[ReportReply | None] = asyncio.get_running_loop().create_future()
    async with engine(nc, space) as eng, worker(nc, space, {"work": work}) as w:
        w._take_next = lambda: ("work", "sum")  # type: ignore[method-assign]
        deliver = w.deliver

        async def observed(order: WorkOrder, report: Report) -> ReportReply | None:
            answer = await deliver(order, report)
            answered.set_result(answer)
            return answer

        w.deliver = observed  # type: ignore[method-assign]
        await eng.submit(dispatch([step("s0"), step("s1", capability="sum", needs=("s0",))]))
        # The engine answers s0's completion once the orders it decided are stored.
        answer = await asyncio.wait_for(answered, 10)
        stored = orders_stored(await js.stream_info(space.stream("WORK")), eng)
    assert answer is not None and answer.ok and answer.order is None, answer
    assert stored == 2  # s0's and s1's: s1 was not handed to x1
    assert eng.stats.handed == 0


async def test_an_executor_killed_9_running_a_handed_order_is_retried_by_its_timeout(
    nats_url, nc, js, space, tmp_path: Path
):
    """w1 finishes `a` and is handed `long` in the answer; killed -9 mid-`long`, the attempt is
    in no queue: its heartbeat timeout schedules attempt 2 through WORK, which the restarted
    executor runs from the last checkpoint; no attempt completes twice."""
    log = tmp_path / "effects.log"
    steps = [step("a", capability="count", timeout_ms=30_000, retry=FAST_RETRY),
             step("long", capability="count", needs=("a",), heartbeat_timeout_ms=3000,
                  timeout_ms=60_000, retry=FAST_RETRY)]
    async with engine(nc, space) as eng:
        # Slow ticks, a roomy heartbeat: the kill lands mid-`long` on a busy machine too.
        first = fw.spawn_counter(nats_url, space, log, executor="w1", ticks=8, tick_s=0.3)
        try:
            command = dispatch(steps)
            wf = command.workflow_id
            await eng.submit(command)

            async def long_ticking() -> bool:
                return fw.counts(log, "tick")[f"{wf}/long/1"] >= 2

            await fw.wait_for(long_ticking, 20)
            handed = orders_stored(await js.stream_info(space.stream("WORK")), eng)
        finally:
            fw.kill9(first)
        second = fw.spawn_counter(nats_url, space, log, executor="w1", ticks=8, tick_s=0.02)
        try:
            finals = await fw.wait_all_terminal(js, space, [wf], timeout_s=20)
        finally:
            fw.kill9(second)
        stored = orders_stored(await js.stream_info(space.stream("WORK")), eng)
    assert handed == 1  # only a's order went through WORK: long/1 came in a's answer
    assert stored == 2  # long/2, scheduled by the timeout, through WORK
    assert finals[wf].status == "completed"
    decisions = await check_journal(js, space, wf, finals[wf])
    assert [(t.step, t.attempt) for t in events_of(decisions, StepTimedOut)] == [("long", 1)]
    assert fw.counts(log, "done") == Counter({f"{wf}/a/1": 1, f"{wf}/long/2": 1})
