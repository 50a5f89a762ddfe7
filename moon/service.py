"""Running the engine and workers as services: signals, graceful shutdown, logs bound."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from moon.engine import Engine
from moon.worker import Worker

__all__ = ["on_sigterm", "running", "serve_engine", "serve_worker"]

log = structlog.get_logger("moon.service")


@contextlib.asynccontextmanager
async def running(
    start: Callable[[asyncio.Event], Awaitable[None]], stop: Callable[[], None]
) -> AsyncIterator[None]:
    """Run a service (engine, worker, gate loop) for the block: entered once it is ready,
    stopped gracefully on exit. A service that fails to start raises here, not later."""
    ready = asyncio.Event()
    task = asyncio.ensure_future(start(ready))
    waiter = asyncio.ensure_future(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()
    try:
        yield
    finally:
        stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


def on_sigterm(stop: object) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop)  # type: ignore[arg-type]


async def serve_engine(engine: Engine) -> None:
    """SIGTERM stops taking commands; those in hand finish and are acked before exit."""
    on_sigterm(engine.stop)
    ready = asyncio.Event()
    log.info("engine_starting", space=engine.space.prefix or "-")
    task = asyncio.ensure_future(engine.run(ready=ready))
    await ready.wait()
    log.info("engine_ready")
    await task
    log.info("engine_stopped", **{k: v for k, v in vars(engine.stats).items()
                                   if isinstance(v, int)})


async def serve_worker(worker: Worker) -> None:
    """SIGTERM stops taking orders; an order not acked goes back to the pool, never lost."""
    on_sigterm(worker.stop)
    ready = asyncio.Event()
    task = asyncio.ensure_future(worker.run(ready=ready))
    await ready.wait()
    log.info("worker_ready", executor=worker.executor_id, capabilities=sorted(worker.handlers))
    await task
    log.info("worker_stopped", executor=worker.executor_id, executed=len(worker.executed))
