"""What `moon serve` and `moon worker` run: the engine and an executor, wired to the broker.

The commands themselves (their options, logging, the event loop) are in moon/cli.py; each
import here is made when the service starts, so that `moon --help` stays light.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from moon.cli_lazy import (
    Topology,
    asyncio,
    connect,
    ensure_streams,
    home_dir,
    replicas_from_env,
    space_from_env,
)

__all__ = ["_serve", "_worker"]


def _joined(service: str, nc: Any, home: Path, space: Any, role: str) -> None:
    """Say at start which broker and data dir this service joined."""
    import structlog  # noqa: PLC0415

    from moon.narration import joined  # noqa: PLC0415

    url = nc.connected_url.geturl() if nc.connected_url else ""
    structlog.get_logger(service).info(
        "joined", **joined(url, str(home.absolute()), space.prefix, role))


async def _serve(data_dir: Path | None, concurrency: int, metrics_port: int | None) -> int:
    from envelope.local import local_trust  # noqa: PLC0415 - keep `moon tail` start-up light
    from moon.engine import Engine  # noqa: PLC0415
    from moon.gateway import moon_gate  # noqa: PLC0415
    from moon.local import local_registry, local_walls  # noqa: PLC0415
    from moon.service import serve_engine  # noqa: PLC0415

    home = data_dir or home_dir()
    trust = local_trust(home)
    space = space_from_env()
    async with connect(data_dir=home, name="moon-engine", role="engine") as nc:
        _joined("moon.engine", nc, home, space, "engine")
        js = nc.jetstream()
        await ensure_streams(js, Topology(space=space, replicas=replicas_from_env()))
        registry = await local_registry(js, space, trust)
        engine = Engine(nc, walls=local_walls(trust, writer=True), registry=registry,
                        space=space, concurrency=concurrency)
        gate = moon_gate(nc, engine, signer=trust.moon, trust=trust.trust_for(trust.moon))
        async with gate.serving():
            await serve_engine(engine, metrics_port=metrics_port)
        await registry.stop()
    return 0


# Positional, as `moon worker` passes its options (PLR0917 is waived for */cli.py, not here).
async def _worker(data_dir: Path | None, executor: str, capabilities: list[str],  # noqa: PLR0917
                  command: list[str] | None, url: str | None, watts: float, capacity: int,
                  metrics_port: int | None, *, eager: bool = True) -> int:
    from moon.service import serve_worker  # noqa: PLC0415
    from moon.worker import Handler, Worker, http_handler, subprocess_handler  # noqa: PLC0415

    handler: Handler
    if command:
        import shutil  # noqa: PLC0415

        if shutil.which(command[0]) is None:  # say so now, not at the first step
            from streams.cli_errors import Exit, fail  # noqa: PLC0415

            fail(f"--exec program {command[0]!r} not found or not executable",
                 Exit.INPUT)
        handler = subprocess_handler(command)
    elif url:
        handler = http_handler(url)
    else:
        from moon.demo_handlers import echo  # noqa: PLC0415

        handler = echo
    from envelope.local import local_trust  # noqa: PLC0415
    from moon.local import register_local_executor  # noqa: PLC0415
    from streams.broker import provision_executor  # noqa: PLC0415
    from streams.roles import executor_role  # noqa: PLC0415

    home = data_dir or home_dir()
    space = space_from_env()
    # On this machine's stack the operator's key registers the executor's key (once per key)
    # and, on the embedded broker, gives it a user of its own; the worker then runs with that
    # user's rights alone. Elsewhere an operator does both beforehand.
    async with connect(data_dir=home, name=f"moon-register-{executor}", role="operator") as op:
        signer = await register_local_executor(
            op.jetstream(), space, local_trust(home), home, executor, capabilities=capabilities,
            now_ms=int(time.time() * 1000))
    if (home / "auth.conf").is_file():
        await asyncio.to_thread(provision_executor, home, executor, capabilities)
    async with connect(data_dir=home, name=f"moon-worker-{executor}",
                       role=executor_role(executor)) as nc:
        _joined("moon.worker", nc, home, space, executor_role(executor))
        worker = Worker(nc, executor_id=executor, handlers=dict.fromkeys(capabilities, handler),
                        signer=signer, engines=local_trust(home).engines, space=space,
                        watts=watts, capacity=capacity, eager=eager)
        await serve_worker(worker, metrics_port=metrics_port)
    return 0
