"""Running the engine and workers as services: signals, graceful shutdown, logs bound."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from moon.engine import Engine
from moon.worker import Worker

__all__ = ["serve_engine", "serve_worker"]

log = structlog.get_logger("moon.service")


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
