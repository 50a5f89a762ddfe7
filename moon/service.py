"""Running the engine and workers as services: signals, graceful shutdown, health, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from nats.aio.client import Client

from moon.engine import Engine
from moon.worker import Worker
from streams.health import Check, health_service
from streams.metrics import serve_metrics
from streams.subjects import Space

__all__ = ["observed", "on_sigterm", "running", "serve_engine", "serve_worker"]

log = structlog.get_logger("moon.service")


@contextlib.asynccontextmanager
async def running(
    start: Callable[[asyncio.Event], Awaitable[None]], stop: Callable[[], None]
) -> AsyncIterator[asyncio.Future[None]]:
    """Run a service (engine, worker, gate loop) for the block: entered once it is ready (with
    its task, for a caller that must notice it dying), stopped gracefully on exit. A service
    that fails to start raises here, not later."""
    task = await _started(start)
    try:
        yield task
    finally:
        stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


def on_sigterm(stop: object) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def observed(
    nc: Client, name: str, *, space: Space, checks: dict[str, Check],
    metrics_port: int | None = None, metadata: dict[str, str] | None = None,
) -> AsyncIterator[None]:
    """Health as a NATS micro service for the block, and /metrics over HTTP if a port is given
    (0 picks a free one; the bound port is logged)."""
    if metrics_port is not None:
        bound = serve_metrics(metrics_port)
        log.info("metrics_serving", url=f"http://127.0.0.1:{bound}/metrics")
    service = await health_service(nc, name, space=space, checks=checks, metadata=metadata)
    log.info("health_serving", service=name, id=service.id)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the connection may already be gone
            await service.stop()


async def _started(run: Callable[[asyncio.Event], Awaitable[None]]) -> asyncio.Future[None]:
    """Start a service loop and return once it is ready; a loop that fails first (the broker
    went away mid-subscribe) raises here, so the process exits instead of waiting forever."""
    ready = asyncio.Event()
    task = asyncio.ensure_future(run(ready))
    waiter = asyncio.ensure_future(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done() and not ready.is_set():
        task.result()
        raise RuntimeError("the service stopped before it was ready")
    return task


async def serve_engine(engine: Engine, *, metrics_port: int | None = None) -> None:
    """SIGTERM stops taking commands; those in hand finish and are acked before exit."""
    on_sigterm(engine.stop)
    log.info("engine_starting", space=engine.space.prefix or "-")
    task = await _started(lambda ready: engine.run(ready=ready))

    async def consuming() -> str | None:
        return None if engine.consuming else "not consuming commands"

    async with observed(engine.nc, "moon-engine", space=engine.space,
                        checks={"engine": consuming}, metrics_port=metrics_port):
        log.info("engine_ready")
        await task
    log.info("engine_stopped", **{k: v for k, v in vars(engine.stats).items()
                                   if isinstance(v, int)})


async def serve_worker(worker: Worker, *, metrics_port: int | None = None) -> None:
    """SIGTERM stops taking orders; an order not acked goes back to the pool, never lost."""
    on_sigterm(worker.stop)
    task = await _started(lambda ready: worker.run(ready=ready))

    async def taking() -> str | None:
        return "stopped taking orders" if task.done() else None

    async with observed(worker.nc, "moon-worker", space=worker.space,
                        checks={"worker": taking}, metrics_port=metrics_port,
                        metadata={"executor": worker.executor_id,
                                  "capabilities": ",".join(sorted(worker.handlers))}):
        log.info("worker_ready", executor=worker.executor_id,
                 capabilities=sorted(worker.handlers))
        await task
    log.info("worker_stopped", executor=worker.executor_id, executed=worker.executed)
