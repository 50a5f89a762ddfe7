"""A running MOON for tests: an engine and workers on the test's namespace, torn down after."""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from nats.aio.client import Client

from moon.engine import Engine, now_ms
from moon.service import running
from moon.worker import Handler, Worker
from streams.moon_events import Dispatch, RetryPolicy, StepSpec
from streams.subjects import Space

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


@contextlib.asynccontextmanager
async def engine(nc: Client, space: Space) -> AsyncIterator[Engine]:
    eng = Engine(nc, space=space)
    async with running(lambda ready: eng.run(ready=ready), eng.stop):
        yield eng


@contextlib.asynccontextmanager
async def worker(nc: Client, space: Space, handlers: dict[str, Handler], executor_id: str = "x1",
                 **options) -> AsyncIterator[Worker]:
    w = Worker(nc, executor_id=executor_id, handlers=handlers, space=space, **options)
    async with running(lambda ready: w.run(ready=ready), w.stop):
        yield w
