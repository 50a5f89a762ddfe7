"""An executor in a few lines: one decorated function per capability.

    from maestro.client import Executor, Stack

    app = Executor("summarizer")

    @app.capability("summarize")
    async def summarize(ctx):
        text = ctx.input("fetch")               # a dependency's result, as text
        await ctx.checkpoint({"read": len(text)})  # a retry after a crash resumes from here
        ctx.used(tokens=120)                     # reported with the result
        return {"summary": text[:80]}            # bytes, str, None, JSON-able or a Result

    async with Stack.connect() as stack:
        await app.run(stack)                     # until Ctrl-C, SIGTERM or app.stop()

What it does underneath is what `moon worker` does: the stack's operator registers this
executor's key (made on first use in the data dir) with its capabilities, the embedded broker
gives it a user of its own, and a `moon.worker.Worker` runs the functions with that user's
rights alone. Heartbeats are sent for steps with a heartbeat timeout, wall time and joules are
measured, and an exception fails the attempt (retried by the step's policy; raise
`NonRetryable` to fail it for good). With an `offer` it also advertises on MAESTRO's board, so
goals are planned onto it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from maestro.goal import CapabilityOffer, Offer
from moon.worker import NonRetryable, Result, StepContext, Worker
from streams.ids import check_id

if TYPE_CHECKING:
    from maestro.client import Stack

__all__ = ["Context", "Executor", "NonRetryable", "Result"]

log = structlog.get_logger("maestro.executor")
Output = Result | bytes | str | None | Any
Function = Callable[["Context"], Awaitable[Output]]


def _encoded(value: Any) -> bytes:
    """What a step returns or checkpoints, as the journal's bytes."""
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return msgspec.json.encode(value)


@dataclass
class Context:
    """One attempt of one step, as a function sees it."""

    _step: StepContext
    tokens: int = 0  # spent so far by this attempt (`used`), reported with the result

    @property
    def key(self) -> str:
        """The attempt's idempotency key, `workflow/step/attempt`: pass it to side effects."""
        return self._step.key

    @property
    def workflow_id(self) -> str:
        return self._step.order.workflow_id

    @property
    def step(self) -> str:
        return self._step.order.step

    @property
    def attempt(self) -> int:
        return self._step.order.attempt

    @property
    def compensating(self) -> bool:
        """True when this call undoes a completed step (the step's `compensation` capability)."""
        return self._step.order.compensation

    @property
    def inputs(self) -> Mapping[str, bytes]:
        """The results of the steps this one needs, by step id."""
        return self._step.inputs

    def input(self, step: str, default: str = "") -> str:
        """A dependency's result as text."""
        raw = self._step.inputs.get(step)
        return default if raw is None else raw.decode(errors="replace")

    @property
    def params(self) -> bytes:
        """The step's own input from the goal or DAG (`params`)."""
        return self._step.order.params

    def params_json(self, default: Any = None) -> Any:
        return msgspec.json.decode(self.params) if self.params else default

    @property
    def resume_from(self) -> bytes | None:
        """The last checkpoint an earlier attempt of this step saved, if any."""
        return self._step.resume_from

    def resume_json(self, default: Any = None) -> Any:
        return default if self.resume_from is None else msgspec.json.decode(self.resume_from)

    async def checkpoint(self, state: Any) -> None:
        """Journal progress (bytes, text or anything JSON-able): a retry resumes from it."""
        await self._step.checkpoint(_encoded(state))

    async def heartbeat(self) -> None:
        """Sent for you while the function runs; call it to say more often that you live."""
        await self._step.heartbeat()

    def used(self, *, tokens: int) -> None:
        """Count tokens this attempt spent: they go into the workflow's budget and summary
        with its result (an attempt that raises reports its wall time only: moon.worker)."""
        self.tokens += tokens


def _handler(function: Function) -> Callable[[StepContext], Awaitable[Result]]:
    async def handle(step: StepContext) -> Result:
        ctx = Context(step)
        try:
            output = await function(ctx)
        except Exception as error:  # the worker reports it; the executor's log says it too
            log.warning("step_raised", key=ctx.key, error=str(error)[:300] or repr(error),
                        error_type=type(error).__name__)
            raise
        log.info("step_ran", key=ctx.key, tokens=ctx.tokens)
        if isinstance(output, Result):
            return Result(output=output.output, tokens=output.tokens + ctx.tokens)
        return Result(output=_encoded(output), tokens=ctx.tokens)

    return handle


@dataclass
class Executor:
    """An executor process's capabilities, served against a running stack."""

    executor_id: str
    capacity: int = 8  # steps run at once
    watts: float = 0.0  # declared power draw, for the joules in each step's usage
    trust: float = 0.5  # what the operator's registration says of it
    # Advertise on MAESTRO's board: the organisation, and per capability its terms (durations,
    # rates); a capability without terms is offered at the step's own estimate and no cost.
    organisation: str | None = None
    terms: dict[str, CapabilityOffer] = field(default_factory=dict)
    functions: dict[str, Function] = field(default_factory=dict)
    _worker: Worker | None = field(default=None, init=False, repr=False)
    _stopping: asyncio.Event | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if (bad := check_id(self.executor_id, "executor id")) is not None:
            raise ValueError(bad.detail)

    def capability(self, name: str, *, duration_ms: int | None = None, rate: int = 0,
                   rate_per_s: int = 0) -> Callable[[Function], Function]:
        """Register the decorated async function as this executor's `name` (its terms, for the
        board, are optional)."""

        def register(function: Function) -> Function:
            if name in self.functions:
                raise ValueError(f"capability {name!r} is registered twice")
            self.functions[name] = function
            self.terms.setdefault(name, CapabilityOffer(
                capability=name, duration_ms=duration_ms, rate=rate, rate_per_s=rate_per_s))
            return function

        return register

    def offer(self) -> Offer | None:
        """What the board shows of it, when it advertises (an `organisation` is set)."""
        if self.organisation is None:
            return None
        return Offer(executor=self.executor_id, organisation=self.organisation,
                     capabilities=tuple(self.terms[c] for c in sorted(self.functions)),
                     trust=self.trust, watts=self.watts, capacity=self.capacity)

    @contextlib.asynccontextmanager
    async def serving(self, stack: Stack) -> AsyncIterator[Worker]:
        """Registered and taking orders for the block (yields the underlying Worker)."""
        from maestro.board import Advertiser, Board  # noqa: PLC0415
        from moon.local import register_local_executor  # noqa: PLC0415
        from moon.narration import joined  # noqa: PLC0415
        from moon.service import running  # noqa: PLC0415
        from streams.broker import connect, provision_executor  # noqa: PLC0415
        from streams.roles import executor_role  # noqa: PLC0415

        if not self.functions:
            raise ValueError(f"executor {self.executor_id!r} has no capability: decorate a "
                             "function with @executor.capability(NAME)")
        capabilities = sorted(self.functions)
        home = stack.data_dir
        # As `moon worker` does: the operator registers the key; the embedded broker (one with
        # auth.conf in the data dir) gets a user for it. Elsewhere an operator did both.
        signer = await register_local_executor(
            stack.nc.jetstream(), stack.space, stack.trust, home, self.executor_id,
            capabilities=capabilities, trust_level=self.trust, now_ms=int(time.time() * 1000))
        if (home / "auth.conf").is_file():
            await asyncio.to_thread(provision_executor, home, self.executor_id, capabilities)
        nc_role = executor_role(self.executor_id)
        async with contextlib.AsyncExitStack() as inside:
            nc = await inside.enter_async_context(connect(
                stack.url, data_dir=home, name=f"executor-{self.executor_id}", role=nc_role,
                bounded=False))
            worker = Worker(nc, executor_id=self.executor_id,
                            handlers={c: _handler(f) for c, f in self.functions.items()},
                            signer=signer, engines=stack.trust.engines, space=stack.space,
                            watts=self.watts, capacity=self.capacity)
            await inside.enter_async_context(running(worker.run_until_ready, worker.stop))
            if (offer := self.offer()) is not None:
                advertiser = await Advertiser(Board(nc.jetstream(), stack.space), offer,
                                              signer=signer).start()
                inside.push_async_callback(advertiser.stop)
            url = nc.connected_url.geturl() if nc.connected_url else ""
            log.info("executor_ready", executor=self.executor_id, capabilities=capabilities,
                     advertised=offer is not None, **joined(url, str(home.absolute()),
                                                            stack.space.prefix, nc_role))
            self._worker = worker
            try:
                yield worker
            finally:
                self._worker = None
                log.info("executor_stopped", executor=self.executor_id, executed=worker.executed)

    async def run(self, stack: Stack) -> None:
        """Serve until `stop()`, SIGTERM or Ctrl-C; orders not acked go back to the pool."""
        from moon.service import on_sigterm  # noqa: PLC0415

        self._stopping = asyncio.Event()
        on_sigterm(self._stopping.set)
        async with self.serving(stack):
            await self._stopping.wait()

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._worker is not None:
            self._worker.stop()
