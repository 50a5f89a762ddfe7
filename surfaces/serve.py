"""Serve the three surfaces on one loopback port, and the `maestro-surfaces` command.

    await serve_surfaces(nc, services=trust.services, caller=operator, space=space, port=8470)

HTTP at /v1/… and /openapi.json, MCP Streamable HTTP at /mcp, A2A at /a2a with its card at
/.well-known/agent-card.json. `nc` is an already-connected NATS client (the lead passes a
role-authenticated one); nothing here opens its own connection except the command below.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import structlog
import uvicorn
from nats.aio.client import Client as Nats
from starlette.applications import Starlette
from starlette.routing import Mount

from envelope.keys import KeyRing, load_signer
from streams.logs import configure_logging
from streams.loop import run as run_loop
from streams.subjects import Space
from surfaces.a2a_server import A2aSurface
from surfaces.forward import Caller, Gateway
from surfaces.http import DEFAULT_MAX_BODY, http_routes
from surfaces.mcp_server import McpSurface
from surfaces.reads import Reads
from surfaces.ui import close_streams

__all__ = ["DEFAULT_PORT", "main", "serve_surfaces", "surfaces_app"]

DEFAULT_PORT = 8470
log = structlog.get_logger("surfaces")


def surfaces_app(
    nc: Nats,
    *,
    services: Mapping[str, str],
    caller: Caller | None,
    space: Space | None = None,
    base_url: str = f"http://127.0.0.1:{DEFAULT_PORT}",
    keys: KeyRing | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    timeout_s: float = 60.0,
    inline_s: float = 5.0,
    ui_actions: bool = False,
) -> Starlette:
    """One ASGI app with all three surfaces. `caller` is who MCP (and A2A requests that carry
    no envelopes of their own) seal as; None serves HTTP and caller-sealed A2A only."""
    space = space or Space()
    gateway = Gateway(nc, services, space=space, keys=keys or KeyRing(), timeout_s=timeout_s)
    reads = Reads(nc.jetstream(), space, engines=frozenset({services["moon"]}),
                  planners=frozenset({services["maestro"]}))
    a2a = A2aSurface(gateway, reads, caller, url=f"{base_url}/a2a")
    routes = [*http_routes(gateway, reads, max_body=max_body, base_url=base_url, caller=caller,
                           ui_actions=ui_actions),
              *a2a.routes()]
    mcp = McpSurface(gateway, reads, caller, inline_s=inline_s) if caller is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if mcp is not None:
                await stack.enter_async_context(mcp.server.session_manager.run())
            yield

    if mcp is not None:
        routes.append(Mount("/", app=mcp.http_app()))  # last: its only route is /mcp
    return Starlette(routes=routes, lifespan=lifespan)


async def serve_surfaces(
    nc: Nats,
    *,
    services: Mapping[str, str],
    caller: Caller | None,
    space: Space | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    ready: asyncio.Event | None = None,
    **options: object,
) -> None:
    """Serve HTTP, MCP and A2A until cancelled (uvicorn then finishes the requests in hand)."""
    app = surfaces_app(nc, services=services, caller=caller, space=space,
                       base_url=f"http://{host}:{port}", **options)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           lifespan="on"))
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        while not server.started:  # uvicorn has no event for this; it flips one flag
            if task.done():
                task.result()
                return
            await asyncio.sleep(0.02)
        log.info("surfaces_serving", url=f"http://{host}:{port}", ui=f"http://{host}:{port}/ui",
                 mcp=f"http://{host}:{port}/mcp",
                 a2a=f"http://{host}:{port}/.well-known/agent-card.json")
        if ready is not None:
            ready.set()
        await asyncio.shield(task)
    finally:
        close_streams(app)  # the UI's event streams would hold uvicorn's shutdown open
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the command ---------------------------------------------------------------------------------


def _caller(data_dir: Path, key: Path | None, grants: Sequence[Path]) -> tuple[Caller,
                                                                              dict[str, str]]:
    from envelope.local import local_trust  # noqa: PLC0415 - only the command reads key files

    trust = local_trust(data_dir)
    if key is None:
        return Caller(trust.operator, (trust.operator_grant,)), trust.services
    return Caller(load_signer(key), tuple(p.read_bytes() for p in grants)), trust.services


async def _main(args: argparse.Namespace) -> None:
    from streams.broker import connect  # noqa: PLC0415
    from streams.config import space_from_env  # noqa: PLC0415

    caller, services = _caller(args.data_dir, args.key, args.grant)
    async with connect(data_dir=args.data_dir, name=f"maestro-surfaces-{args.command}") as nc:
        space = space_from_env()
        _say_joined(nc, args.data_dir, space.prefix)
        if args.command == "mcp":
            gateway = Gateway(nc, services, space=space)
            reads = Reads(nc.jetstream(), space, engines=frozenset({services["moon"]}),
                          planners=frozenset({services["maestro"]}))
            surface = McpSurface(gateway, reads, caller,
                                 inline_s=args.inline_s)
            await surface.run_stdio()
            return
        await serve_surfaces(nc, services=services, caller=caller, space=space, host=args.host,
                             port=args.port, inline_s=args.inline_s, ui_actions=args.ui_actions)


def _say_joined(nc: Nats, data_dir: Path, space: str) -> None:
    """Which broker and data dir this service joined, as every service says at start (on
    stderr: for `mcp`, stdout is the protocol)."""
    from moon.narration import joined  # noqa: PLC0415
    from streams.credentials import role_of  # noqa: PLC0415

    url = nc.connected_url.geturl() if nc.connected_url else ""
    log.info("joined", **joined(url, str(data_dir.absolute()), space, role_of(nc) or "-"))


def main(argv: Sequence[str] | None = None) -> None:
    from streams.broker import home_dir  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="maestro-surfaces", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["serve", "mcp"],
                        help="serve: HTTP+MCP+A2A on one port; mcp: MCP on stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keys and embedded broker (default MAESTRO_HOME or .maestro)")
    parser.add_argument("--key", type=Path, default=None,
                        help="the caller's key file (default: the local operator)")
    parser.add_argument("--grant", type=Path, action="append", default=[],
                        help="a grant of the caller's chain, root first (repeat)")
    parser.add_argument("--inline-s", type=float, default=5.0,
                        help="how long a tool call waits before it answers with a task")
    parser.add_argument("--ui-actions", action="store_true",
                        help="enable the web UI's operator actions (through the gate)")
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or home_dir()
    # JSON lines on stderr, as every service logs (for `mcp`, stdout is the protocol).
    configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(_main(args))


if __name__ == "__main__":
    main()
