"""`moon status`'s "no live executor offers X" against a real nats-server: the WORK stream's
consumers say whether anyone takes a pool's orders (moon/liveness.py)."""

from __future__ import annotations

import asyncio
import os

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from envelope.keys import signer_from_seed
from moon.liveness import Pool, pool_name, pools
from moon.screens import wait_hints, waiting_pools
from moon.worker import Result, StepContext, Worker
from moon.workflow import StepState, WorkflowState
from streams.moon_events import StepSpec
from streams.subjects import Space
from tests.security.world import Secured


def _waiting(capability: str, executor: str | None = None) -> WorkflowState:
    step = StepState(spec=StepSpec(id="s", capability=capability, executor=executor),
                     status="scheduled", attempt=1, executor=executor, assigned=executor)
    return WorkflowState(workflow_id="wf", status="running", steps={"s": step})


async def _until(js: JetStreamContext, space: Space, name: str, *, live: bool) -> Pool:
    """The broker's view of a consumer, asked until it says `live` (no event tells us)."""
    async with asyncio.timeout(15):
        while (pool := (await pools(js, space, [name]))[name]).live != live:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return pool


async def _echo(ctx: StepContext) -> Result:
    return Result(output=b"")


def test_the_hint_names_the_missing_pool_a_busy_one_and_a_dead_executor() -> None:
    state = _waiting("cap.x")
    assert waiting_pools(state) == ["any-cap_x"]
    assert wait_hints(state, {"any-cap_x": Pool(exists=False)}) == [
        "s: no live executor offers cap.x"]
    assert wait_hints(state, {"any-cap_x": Pool(exists=True, in_flight=3)}) == [
        "s: waiting: all executors offering cap.x are busy (3 running)"]
    assert "no executor has taken it yet" in wait_hints(state, None)[0]  # not asked: as before
    pinned = _waiting("cap.x", executor="e1")
    assert waiting_pools(pinned) == ["exec-e1"]
    assert wait_hints(pinned, {"exec-e1": Pool(exists=True)}) == [
        "s: executor e1 is not live (nothing takes its orders)"]


async def test_a_pool_is_live_while_a_worker_pulls_and_not_after(nc: Client, js: JetStreamContext,
                                                                  space: Space) -> None:
    name = pool_name(capability="summarise.text")
    assert (await pools(js, space, [name]))[name] == Pool(exists=False)
    worker = Worker(nc, executor_id="live-1", handlers={"summarise.text": _echo},
                    signer=signer_from_seed(os.urandom(32)), engines=frozenset(), space=space)
    ready = asyncio.Event()
    task = asyncio.create_task(worker.run(ready=ready))
    await ready.wait()
    try:
        await _until(js, space, name, live=True)  # its first pull request reaches the server
        state = _waiting("summarise.text")
        assert "no live executor" not in wait_hints(state, await pools(js, space, [name]))[0]
    finally:
        worker.stop()
        await task
    # Its last pull request expires within a second (moon.worker.PULL_WAIT_S): then nobody.
    found = {name: await _until(js, space, name, live=False)}
    assert wait_hints(_waiting("summarise.text"), found) == [
        "s: no live executor offers summarise.text"]


@pytest.mark.parametrize("capability", ["a.b", "moon:x"])
def test_pool_names_are_the_workers_consumer_names(capability: str) -> None:
    assert pool_name(capability=capability).startswith("any-")
    assert pool_name(capability=capability, executor="e-1") == "exec-e-1"


async def test_an_operator_may_ask_whether_a_pool_is_served(secured: Secured) -> None:
    """`moon status` runs as the operator: without the right to read WORK's consumers the
    hint would silently fall back to "no executor has taken it yet"."""
    operator = await secured.connect("operator")
    try:
        found = await pools(operator.jetstream(), secured.space, ["any-nothing"])
    finally:
        await operator.close()
    assert found == {"any-nothing": Pool(exists=False)}
