"""Replan against a real nats-server and a running MOON: an executor dies mid-plan."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

from maestro.goal import Budget, CapabilityOffer, Goal, Offer, Step
from maestro.service import Allocated, Maestro
from moon.gateway import moon_gate
from moon.journal import journal
from moon.service import running
from moon.worker import Result
from streams.codec import Undecodable
from streams.moon_events import StepScheduled, StepStarted

from .. import walls as tw
from ..moon import fault_world as fw
from ..moon.engine_world import engine, worker

SLOW_ON_B = (
    "import sys, json, time; o = json.load(sys.stdin); "
    "time.sleep(60 if o['step'] == 'b' else 0); print(o['step'])"
)


def offers() -> list[Offer]:
    return [
        Offer(executor="x1", organisation="acme", capacity=2,
              capabilities=(CapabilityOffer(capability="work", duration_ms=300, rate=1),)),
        Offer(executor="x2", organisation="acme", capacity=2,
              capabilities=(CapabilityOffer(capability="work", duration_ms=300, rate=5),)),
    ]


GOAL = Goal(
    name="chain", deadline_ms=60_000, budget=Budget(tokens=10_000, cost=100),
    steps=(Step(id="a", capability="work", duration_ms=300),
           Step(id="b", capability="work", needs=("a",), duration_ms=300),
           Step(id="c", capability="work", needs=("b",), duration_ms=300)),
)


async def _started(js, space, wf: str, step: str, executor: str) -> None:
    store = journal(js, space, tw.walls_for(space, writer=False))
    async for item in store.subscribe(store.layout.filter(wf), from_seq=1):
        if isinstance(item, Undecodable):
            continue
        if any(isinstance(e, StepStarted) and e.step == step and e.executor == executor
               for e in item.value.events):
            return


async def test_an_executor_dies_mid_plan_and_the_revision_moves_the_rest(
    nc, js, space, nats_url, tmp_path
):
    trust = tw.trust_for(space)  # the engine's walls trust this MAESTRO key and engine key
    runs: list[str] = []

    async def backup(ctx):
        runs.append(ctx.key)
        return Result(output=ctx.order.step.encode())

    async def live_offers():
        return offers()

    maestro = Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, live_offers,
                      space=space)
    env = fw._env(nats_url, space)
    dying = subprocess.Popen(
        [sys.executable, "-c", "from moon.cli import main; main()", "worker", "--id", "x1",
         "-c", "work", "--exec", f"{sys.executable} -c \"{SLOW_ON_B}\""],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with engine(nc, space) as eng, worker(nc, space, {"work": backup}, executor_id="x2"):
            gate = moon_gate(nc, eng, signer=trust.moon, trust=trust.trust_for(trust.moon))
            async with gate.serving(), running(
                    lambda ready: maestro.run_replanner(ready=ready), maestro.stop):
                outcome = await maestro.plan(GOAL, plan_id="p1")
                assert outcome.decision == "planned"
                assert {a.executor for a in outcome.plan.assignments} == {"x1"}
                allocated = await maestro.allocate("p1")
                assert isinstance(allocated, Allocated), allocated
                wf = allocated.workflow_id
                await asyncio.wait_for(_started(js, space, wf, "b", "x1"), 30)
                dying.send_signal(signal.SIGKILL)  # the executor dies holding step b
                revised = (await asyncio.wait_for(maestro.wait_for_replan(), 30))[0]
                final = await eng.wait_terminal(wf, 60)
    finally:
        dying.kill()
        dying.wait()
    assert final.status == "completed"
    assert revised.moved == {"b": "x1 -> x2", "c": "x1 -> x2"}
    assert final.steps["b"].executor == "x2"
    assert final.steps["c"].executor == "x2"
    loaded = await journal(js, space, tw.walls_for(space, writer=False)).read(wf)
    decisions = [i.value for i in loaded.items]
    scheduled_a = [e for d in decisions for e in d.events
                   if isinstance(e, StepScheduled) and e.step == "a"]
    assert len(scheduled_a) == 1  # the completed step was reused, never re-run
    assert not any(k.startswith(f"{wf}/a/") for k in runs)
    assert final.deadline_ms is not None
    assert max(s.started_at or 0 for s in final.steps.values()) <= final.deadline_ms
