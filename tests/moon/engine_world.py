"""A running MOON for tests: an engine and workers on the test's namespace, torn down after."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamInfo

from moon.authority import Source
from moon.clock import local_ms as now_ms
from moon.engine import Engine
from moon.handoff import Handoff
from moon.index import WorkflowSummary
from moon.service import running
from moon.worker import Handler, Worker
from streams.config import WORKFLOWS
from streams.decider import Decided
from streams.moon_events import Dispatch, MoonCommand, RetryPolicy, StepSpec
from streams.replies import Refusal
from streams.subjects import Space

from .. import walls as tw

_ids = itertools.count()


@dataclass
class SideEffects:
    """Counts executions by idempotency key: a completed step must never run twice."""

    runs: Counter[str] = field(default_factory=Counter)

    def record(self, key: str) -> None:
        self.runs[key] += 1


def dispatch(steps: list[StepSpec], *, workflow_id: str | None = None, **options) -> Dispatch:
    wf = workflow_id or f"wf{next(_ids)}"
    return Dispatch(command_id=f"dispatch-{wf}", workflow_id=wf, at_ms=now_ms(),
                    steps=tuple(steps), **options)


def step(id_: str, capability: str = "work", needs: tuple[str, ...] = (), **options) -> StepSpec:
    options.setdefault("retry", RetryPolicy(maximum_attempts=5, initial_interval_ms=10))
    return StepSpec(id=id_, capability=capability, needs=needs, **options)


class OperatorEngine(Engine):
    """An engine whose `submit` defaults to what the gate hands it for the operator: tests
    dispatch as an operator would through the gate; reports and timers still come over the
    bus, signed, and are checked as in production."""

    async def submit(self, command: MoonCommand, *, source: Source | None = None,
                     redelivered: bool = False,
                     handoff: Handoff | None = None) -> Decided | Refusal:  # type: ignore[override]
        return await super().submit(command, source=source or tw.operator(self.space),
                                    redelivered=redelivered, handoff=handoff)


async def new_engine(nc: Client, space: Space, **options) -> OperatorEngine:
    registry = await tw.registry_for(nc.jetstream(), space)
    return OperatorEngine(nc, walls=tw.walls_for(space), registry=registry, space=space,
                          **options)


@contextlib.asynccontextmanager
async def engine(nc: Client, space: Space, **options) -> AsyncIterator[OperatorEngine]:
    eng = await new_engine(nc, space, **options)
    try:
        async with running(lambda ready: eng.run(ready=ready), eng.stop):
            yield eng
    finally:
        await eng.registry.stop()


async def new_worker(nc: Client, space: Space, handlers: dict[str, Handler],
                     executor_id: str = "x1", **options) -> Worker:
    signer = await tw.executor(nc.jetstream(), space, executor_id, handlers)
    return Worker(nc, executor_id=executor_id, handlers=handlers, signer=signer, space=space,
                  engines=tw.trust_for(space).engines, **options)


@contextlib.asynccontextmanager
async def worker(nc: Client, space: Space, handlers: dict[str, Handler], executor_id: str = "x1",
                 **options) -> AsyncIterator[Worker]:
    w = await new_worker(nc, space, handlers, executor_id, **options)
    async with running(lambda ready: w.run(ready=ready), w.stop):
        yield w


async def orders_queued(js: JetStreamContext, space: Space) -> int:
    """The orders in WORK now: its messages but the engines' keepers (moon/keeper.py). Orders
    are on `work.exec.<x>` and `work.any.<c>`; a keeper and a cancel's markers on two tokens."""
    info = await js.stream_info(space.stream("WORK"), subjects_filter=space.subject("work.*.*"))
    return sum((info.state.subjects or {}).values())


def orders_stored(info: StreamInfo, *engines: Engine) -> int:
    """The orders WORK ever stored: its last sequence but the engines' keepers."""
    return int(info.state.last_seq) - sum(e.effects.keeper.kept for e in engines)


async def index_entry(js: JetStreamContext, space: Space, wf: str,
                      until: Callable[[WorkflowSummary], bool],
                      timeout_s: float = 20.0) -> WorkflowSummary:
    """The workflow's index entry, its puts watched until one satisfies `until` (an entry is
    put as an effect of a decision, after the journal shows the decision)."""
    kv = await js.key_value(space.bucket(WORKFLOWS.name))
    watcher = await kv.watch(wf)
    try:
        async with asyncio.timeout(timeout_s):
            async for entry in watcher:
                if entry is None or entry.value is None:
                    continue
                summary = msgspec.json.decode(entry.value, type=WorkflowSummary)
                if until(summary):
                    return summary
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
    raise AssertionError("a watch does not end")
