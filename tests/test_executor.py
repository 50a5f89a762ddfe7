"""The executor decorator API (maestro/executor.py): what a function returns and counts becomes
the step's result and usage; registration mistakes are refused at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from envelope.client import Client as EnvelopeClient
from envelope.local import local_trust
from maestro.client import Stack
from maestro.executor import Context, Executor, Result, _handler
from moon.engine import Engine
from moon.gateway import moon_gate
from moon.local import local_registry, local_walls
from moon.service import running
from moon.worker import StepContext
from streams.moon_events import RetryPolicy, StepSpec, WorkOrder
from streams.subjects import Space


def _order(**changes: Any) -> WorkOrder:
    base: dict[str, Any] = dict(workflow_id="wf", step="s", attempt=1, capability="c",
                                executor=None, deadline_ms=0, timeout_ms=1000,
                                idempotency_key="wf/s/1", input={"dep": b"hello"},
                                params=b'{"n": 2}')
    return WorkOrder(**{**base, **changes})


def _call(function: Any, order: WorkOrder | None = None) -> Result:
    step = StepContext(order=order or _order(), worker=None)  # type: ignore[arg-type]

    async def run() -> Result:
        return await _handler(function)(step)

    return asyncio.run(run())


@pytest.mark.parametrize(("returned", "output"), [
    (b"raw", b"raw"), ("text", b"text"), (None, b""), ({"a": [1, 2]}, b'{"a":[1,2]}'),
    (Result(output=b"r", tokens=3), b"r"),
])
def test_what_a_function_returns_is_the_steps_result(returned: Any, output: bytes) -> None:
    async def function(ctx: Context) -> Any:
        return returned

    assert _call(function).output == output


def test_tokens_counted_with_used_are_reported_beside_a_results_own() -> None:
    async def function(ctx: Context) -> Any:
        ctx.used(tokens=5)
        ctx.used(tokens=2)
        return Result(output=b"", tokens=3) if ctx.params_json()["n"] == 2 else b""

    assert _call(function).tokens == 10


def test_the_context_reads_inputs_params_and_the_last_checkpoint() -> None:
    seen: dict[str, Any] = {}

    async def function(ctx: Context) -> None:
        seen.update(key=ctx.key, dep=ctx.input("dep"), missing=ctx.input("x", "-"),
                    params=ctx.params_json(), resumed=ctx.resume_json(default={}))

    _call(function, _order(checkpoint=b'{"page": 4}'))
    assert seen == {"key": "wf/s/1", "dep": "hello", "missing": "-", "params": {"n": 2},
                    "resumed": {"page": 4}}


def test_registration_mistakes_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="executor id"):
        Executor("not an id")
    app = Executor("ok")

    @app.capability("c")
    async def one(ctx: Context) -> None:
        return None

    with pytest.raises(ValueError, match="twice"):
        app.capability("c")(one)
    assert app.offer() is None  # no organisation: it does not advertise
    advertised = Executor("ok", organisation="acme")
    advertised.capability("c", duration_ms=500, rate=2)(one)
    offer = advertised.offer()
    assert offer is not None and offer.capabilities[0].duration_ms == 500


@contextlib.asynccontextmanager
async def _stack(nc: Client, js: JetStreamContext, space: Space, home: Path,
                 url: str) -> AsyncIterator[Stack]:
    """MOON and its gate on the test's namespace, reached as `Stack.connect` would."""
    trust = local_trust(home)
    registry = await local_registry(js, space, trust)
    engine = Engine(nc, walls=local_walls(trust, writer=True), registry=registry, space=space)
    try:
        async with running(lambda ready: engine.run(ready=ready), engine.stop), moon_gate(
                nc, engine, signer=trust.moon, trust=trust.trust_for(trust.moon)).serving():
            client = EnvelopeClient(nc, trust.operator, trust.services,
                                    grant=(trust.operator_grant,), space=space, timeout_s=10)
            yield Stack(nc, trust, space, client, data_dir=home, url=url)
    finally:
        await registry.stop()


async def test_a_function_that_crashed_is_retried_from_its_checkpoint(
        nc: Client, js: JetStreamContext, space: Space, nats_url: str, tmp_path: Path) -> None:
    app = Executor("ckpt-exec")
    seen: list[Any] = []

    @app.capability("count.words")
    async def count(ctx: Context) -> dict[str, int]:
        seen.append(ctx.resume_json())
        ctx.used(tokens=4)
        if ctx.attempt == 1:
            await ctx.checkpoint({"counted": 2})
            raise RuntimeError("the machine went away")
        return {"words": len(ctx.params.split())}

    async with _stack(nc, js, space, tmp_path / "home", nats_url) as stack, app.serving(stack):
        dag = await stack.dispatch([StepSpec(
            id="count", capability="count.words", params=b"one two three",
            retry=RetryPolicy(maximum_attempts=3, initial_interval_ms=20))])
        state = await stack.wait(dag.workflow_id, timeout_s=30)
    assert state.status == "completed", state
    assert seen == [None, {"counted": 2}]  # the retry resumed from the crashed attempt's state
    assert state.steps["count"].result == b'{"words":3}'
    # The completed attempt's tokens; moon.worker reports a failed attempt's wall time only.
    assert state.usage.tokens == 4
