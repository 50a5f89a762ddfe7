"""The executor decorator API (maestro/executor.py): what a function returns and counts becomes
the step's result and usage; registration mistakes are refused at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from maestro.executor import Context, Executor, Result, _handler
from moon.worker import StepContext
from streams.moon_events import WorkOrder


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
