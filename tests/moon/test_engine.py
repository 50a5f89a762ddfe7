"""The engine against a real nats-server: dispatch, execute, retry, compensate, replay."""

from __future__ import annotations

import asyncio
import random

from moon import replay
from moon.journal import journal
from moon.worker import Result, StepContext
from streams.decider import Decided
from streams.replies import Reason, Refusal

from .. import walls as tw
from .engine_world import SideEffects, dispatch, engine, new_engine, now_ms, step, worker


async def test_a_three_step_chain_completes_and_replays_to_the_live_state(nc, js, space):
    effects = SideEffects()

    async def work(ctx: StepContext) -> Result:
        effects.record(ctx.key)
        upstream = b"+".join(ctx.inputs.values())
        return Result(output=upstream + ctx.order.step.encode(), tokens=10)

    async with engine(nc, space) as eng, worker(nc, space, {"work": work}):
        command = dispatch([step("a"), step("b", needs=("a",)), step("c", needs=("b",))])
        outcome = await eng.submit(command)
        assert isinstance(outcome, Decided)
        final = await eng.wait_terminal(command.workflow_id, 30)
    assert final.status == "completed"
    assert final.steps["c"].result == b"ab+c" or final.steps["c"].result.endswith(b"c")
    assert final.usage.tokens == 30
    assert all(n == 1 for n in effects.runs.values())
    loaded = await journal(js, space, tw.walls_for(space)).read(command.workflow_id)
    decisions = [item.value for item in loaded.items]
    assert replay.fold(decisions) == final
    assert replay.verify(decisions) == []


async def test_dispatching_the_same_request_twice_starts_one_workflow(nc, js, space):
    async with engine(nc, space) as eng:
        command = dispatch([step("a")])
        first = await eng.submit(command)
        again = await eng.submit(command)
    assert isinstance(first, Decided)
    assert isinstance(again, Decided)
    assert again.events == [] or again.duplicate
    loaded = await journal(js, space, tw.walls_for(space)).read(command.workflow_id)
    assert len(loaded.items) == 1


async def test_a_dag_with_a_cycle_is_refused_with_its_path(nc, js, space):
    eng = await new_engine(nc, space)
    outcome = await eng.submit(dispatch([step("a", needs=("b",)), step("b", needs=("a",))]))
    assert isinstance(outcome, Refusal)
    assert outcome.reason is Reason.CYCLE
    assert "a" in outcome.detail


async def test_a_50_step_dag_with_random_failures_completes_and_replays_exactly(nc, js, space):
    rng = random.Random(7)
    steps = []
    for i in range(50):
        picks = {f"s{rng.randrange(i)}" for _ in range(rng.randint(0, 2))} if i else set()
        needs = tuple(sorted(picks))
        steps.append(step(f"s{i}", needs=needs))
    effects = SideEffects()
    completed_keys: set[str] = set()

    async def flaky(ctx: StepContext) -> Result:
        effects.record(ctx.key)
        if rng.random() < 0.2:
            raise RuntimeError("executor hiccup")
        completed_keys.add(ctx.key)
        return Result(output=ctx.order.step.encode(), tokens=1)

    async with engine(nc, space) as eng, worker(nc, space, {"work": flaky}, capacity=16):
        command = dispatch(steps)
        await eng.submit(command)
        final = await eng.wait_terminal(command.workflow_id, 90)
    assert final.status == "completed"
    assert all(s.status == "completed" for s in final.steps.values())
    assert all(effects.runs[k] == 1 for k in completed_keys)
    loaded = await journal(js, space, tw.walls_for(space)).read(command.workflow_id)
    decisions = [i.value for i in loaded.items]
    assert replay.fold(decisions) == final
    assert replay.verify(decisions) == []


async def test_timers_of_settled_steps_and_ended_workflows_are_cancelled(nc, js, space):
    """Otherwise every step's timeout fires a minute after the step is done, into a decision of
    nothing: one more command per step for the engine, one more schedule held by the broker."""
    async def work(ctx: StepContext) -> Result:
        return Result(output=b"ok")

    async with engine(nc, space) as eng, worker(nc, space, {"work": work}):
        command = dispatch([step("a"), step("b", needs=("a",), heartbeat_timeout_ms=30_000)],
                           deadline_ms=now_ms() + 600_000)
        await eng.submit(command)
        final = await eng.wait_terminal(command.workflow_id, 30)
    assert final.status == "completed"
    timers = space.subject(f"moon.timer.{command.workflow_id}.>")
    deadline = asyncio.get_running_loop().time() + 10

    async def pending() -> dict[str, int]:
        info = await js.stream_info(space.stream("MOON_CMD"), subjects_filter=timers)
        return info.state.subjects or {}

    while left := await pending():  # the purge runs beside the last decision's other effects
        assert asyncio.get_running_loop().time() < deadline, left
        await asyncio.sleep(0.05)
