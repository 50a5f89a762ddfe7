"""`maestro up`: the whole stack on this machine, like `temporal server start-dev` (here, in
surfaces, because it starts the surfaces too).

One process: the embedded broker (authentication on, its data dir), the MOON engine and its
gate, MAESTRO and its replanner, the HTTP/MCP/A2A surfaces on loopback and, with
`demo_executors`, the example executors. Each part connects as its own broker user with its
role's rights alone, as separate services would. SIGTERM or Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from envelope.local import LocalTrust, local_trust
from envelope.registry import Registry
from maestro.board import Advertiser, Board
from maestro.gateway import maestro_gate
from maestro.goal import load_offers
from maestro.service import Maestro
from moon.demo_handlers import echo
from moon.engine import Engine
from moon.gateway import moon_gate
from moon.local import local_registry, local_walls, register_local_executor
from moon.service import running
from moon.worker import Worker
from streams.broker import EmbeddedBroker, connect, provision_executor
from streams.config import Topology, ensure_streams
from streams.replies import Refusal
from streams.roles import executor_role
from streams.subjects import Space

__all__ = ["Stack", "run_up"]

log = structlog.get_logger("maestro.up")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass(frozen=True)
class Stack:
    """Where everything is, as `maestro up` prints it (and writes to `<data>/stack.json`)."""

    nats_url: str
    data_dir: str
    credentials: str
    http: str
    mcp: str
    a2a: str
    executors: tuple[str, ...]
    ui: str = ""


async def run_up(data_dir: Path, *, port: int, http_port: int, demo_executors: bool,
                 say: Any = print, ready: asyncio.Event | None = None,
                 ui_actions: bool = False) -> int:
    from surfaces.forward import Caller  # noqa: PLC0415 - only `up` needs the web stack
    from surfaces.serve import serve_surfaces  # noqa: PLC0415

    if (data_dir / "nats.url").is_file():
        with contextlib.suppress(Exception):
            await _already_running(data_dir)
            say(f"maestro up: a stack already runs on {data_dir} "
                f"({(data_dir / 'nats.url').read_text().strip()})")
            return 2
    space = Space()
    broker = EmbeddedBroker(data_dir=data_dir, port=port)
    await asyncio.to_thread(broker.start)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    try:
        trust = local_trust(data_dir)
        async with contextlib.AsyncExitStack() as stack:
            async def as_role(role: str) -> Any:
                return await stack.enter_async_context(
                    connect(data_dir=data_dir, name=f"up-{role}", role=role))

            admin = await as_role("admin")
            await ensure_streams(admin.jetstream(), Topology(space=space))
            registry = await stack.enter_async_context(_registry(admin, space, trust))
            engine = await _moon(stack, await as_role("engine"), trust, registry, space)
            await _maestro(stack, await as_role("maestro"), trust, registry, space)
            executors = (await _executors(stack, as_role, admin, data_dir=data_dir, trust=trust,
                                          space=space)
                         if demo_executors else ())
            surfaces_ready = asyncio.Event()
            surfaces = asyncio.ensure_future(serve_surfaces(
                await as_role("gateway"), services=trust.services,
                caller=Caller(trust.operator, (trust.operator_grant,)), space=space,
                port=http_port, ready=surfaces_ready, ui_actions=ui_actions))
            await asyncio.wait({surfaces, asyncio.ensure_future(surfaces_ready.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            if surfaces.done():
                surfaces.result()  # raises what stopped it (a port in use, say)
            absolute = await asyncio.to_thread(
                lambda: (data_dir.absolute(), broker.creds_dir.absolute()))
            where = Stack(
                nats_url=broker.url, data_dir=str(absolute[0]), credentials=str(absolute[1]),
                http=f"http://127.0.0.1:{http_port}/v1/",
                mcp=f"http://127.0.0.1:{http_port}/mcp",
                a2a=f"http://127.0.0.1:{http_port}/.well-known/agent-card.json",
                executors=executors, ui=f"http://127.0.0.1:{http_port}/ui"
                + (" (actions on)" if ui_actions else " (read-only)"))
            for name, value in vars(where).items():
                say(f"{name:<12} {', '.join(value) if isinstance(value, tuple) else value}")
            say("ready: Ctrl-C or SIGTERM stops the stack")
            if ready is not None:
                ready.set()
            await stopping.wait()
            surfaces.cancel()
            with contextlib.suppress(BaseException):
                await surfaces
            engine.stop()
    finally:
        await asyncio.to_thread(broker.stop)
    return 0


async def _already_running(data_dir: Path) -> None:
    async with connect(data_dir=data_dir, name="up-probe", role="operator"):
        return


@contextlib.asynccontextmanager
async def _registry(nc: Any, space: Space, trust: LocalTrust) -> AsyncIterator[Registry]:
    registry = await local_registry(nc.jetstream(), space, trust)
    try:
        yield registry
    finally:
        await registry.stop()


async def _moon(stack: contextlib.AsyncExitStack, nc: Any, trust: LocalTrust,
                registry: Registry, space: Space) -> Engine:
    engine = Engine(nc, walls=local_walls(trust, writer=True), registry=registry, space=space)
    await stack.enter_async_context(running(lambda ready: engine.run(ready=ready), engine.stop))
    await stack.enter_async_context(
        moon_gate(nc, engine, signer=trust.moon, trust=trust.trust_for(trust.moon)).serving())
    return engine


async def _maestro(stack: contextlib.AsyncExitStack, nc: Any, trust: LocalTrust,
                   registry: Registry, space: Space) -> Maestro:
    board = Board(nc.jetstream(), space, registry=registry)

    async def offers() -> Any:
        return await board.live()

    maestro = Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, offers,
                      space=space, registry=registry, engines=trust.engines,
                      planners=trust.planners)
    await stack.enter_async_context(maestro_gate(
        nc, maestro, signer=trust.maestro, trust=trust.trust_for(trust.maestro)).serving())
    await stack.enter_async_context(
        running(lambda ready: maestro.run_replanner(ready=ready), maestro.stop))
    return maestro


async def _executors(stack: contextlib.AsyncExitStack, as_role: Any, admin: Any, *,
                     data_dir: Path, trust: LocalTrust, space: Space) -> tuple[str, ...]:
    """The example executors (examples/executors.yaml), each registered, given a broker user
    of its own, advertising its offer and serving its capabilities with the echo handler."""
    listed = load_offers(EXAMPLES / "executors.yaml")
    if isinstance(listed, Refusal):
        raise RuntimeError(f"examples/executors.yaml: {listed.detail}")
    names = []
    for offer in listed:
        capabilities = sorted({c.capability for c in offer.capabilities})
        signer = await register_local_executor(admin.jetstream(), space, trust, data_dir,
                                               offer.executor, capabilities=capabilities,
                                               trust_level=offer.trust)
        await asyncio.to_thread(provision_executor, data_dir, offer.executor, capabilities)
        nc = await as_role(executor_role(offer.executor))
        worker = Worker(nc, executor_id=offer.executor,
                        handlers=dict.fromkeys(capabilities, echo), signer=signer,
                        engines=trust.engines, space=space, capacity=offer.capacity)
        await stack.enter_async_context(running(worker.run_until_ready, worker.stop))
        advertiser = await Advertiser(Board(nc.jetstream(), space), offer,
                                      signer=signer).start()
        stack.push_async_callback(advertiser.stop)
        names.append(offer.executor)
    return tuple(names)
