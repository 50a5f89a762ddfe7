"""moon.dispatch through HTTP and MCP against the native NATS path, in the same run.

Run: .venv/bin/python benchmarks/surfaces.py (or -m benchmarks.surfaces)
    [--n 300] [--rounds 3] [--clients 16] [--burst 600]

One embedded nats-server, a MOON engine and its gate, and the surfaces' app on a loopback uvicorn
(httptools), all in this process (as `maestro up` runs them); the three paths alternate call by
call so machine load hits them alike. Latency is sequential (seal, send, verified answer);
throughput is `--clients` concurrent callers. Target: HTTP adds at most 1 ms p50 over native.
"""

from __future__ import annotations

# ruff: noqa: E402 - sys.path is fixed before the packages are imported
import sys
from pathlib import Path

# Run as a file, this folder would be first on sys.path and benchmarks/envelope.py would
# shadow the envelope package: drop the folder (as benchmarks/moon.py does).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import httpx
import msgspec
import structlog
import uvicorn
from mcp import Client as McpClient
from nats.aio.client import Client as Nats
from starlette.applications import Starlette
from starlette.routing import Mount

from envelope.client import Client
from envelope.local import LocalTrust, local_trust
from moon.engine import Engine
from moon.gateway import moon_gate
from moon.local import local_registry, local_walls
from moon.service import running
from streams.broker import EmbeddedBroker, free_port, open_connection
from streams.config import Topology, ensure_streams
from streams.subjects import Space
from surfaces.forward import Caller, Gateway
from surfaces.http import http_routes
from surfaces.mcp_server import McpSurface
from surfaces.reads import Reads

BODY = msgspec.msgpack.encode({"steps": [{"id": "a", "capability": "bench-nobody"}]})
NATIVE = {"content-type": "application/vnd.maestro.envelope.v1+msgpack"}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def _app(nc: Nats, space: Space, tmp: Path
               ) -> tuple[LocalTrust, Gateway, Caller, Starlette]:
    trust = local_trust(tmp)
    caller = Caller(trust.operator, (trust.operator_grant,))
    gateway = Gateway(nc, trust.services, space=space)
    # The surfaces show only the journals the data dir's engines and planners signed.
    reads = Reads(nc.jetstream(), space, engines=trust.engines, planners=trust.planners)
    mcp = McpSurface(gateway, reads, caller)
    app = Starlette(routes=[*http_routes(gateway, reads), Mount("/", app=mcp.http_app())],
                    lifespan=lambda _: mcp.server.session_manager.run())
    return trust, gateway, caller, app


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="sequential dispatches per path/round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--burst", type=int, default=600, help="dispatches per throughput run")
    args = parser.parse_args()
    # One log line per request would be measured too; the services log warnings only here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    space = Space("bench")
    with tempfile.TemporaryDirectory(prefix="surfaces-bench-") as tmp:
        broker = EmbeddedBroker(data_dir=Path(tmp) / "nats").start()
        nc = await open_connection(broker.url, name="surfaces-bench")
        try:
            await ensure_streams(nc.jetstream(), Topology(space=space))
            port = free_port()
            trust, gateway, caller, app = await _app(nc, space, Path(tmp))
            registry = await local_registry(nc.jetstream(), space, trust)
            engine = Engine(nc, walls=local_walls(trust, writer=True), registry=registry,
                            space=space)
            gate = moon_gate(nc, engine, signer=trust.moon, trust=trust.trust_for(trust.moon))
            server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                   log_level="warning", lifespan="on",
                                                   http="httptools"))
            serve = asyncio.get_running_loop().create_task(server.serve())
            async with running(lambda r: engine.run(ready=r), engine.stop), gate.serving():
                while not server.started:  # noqa: ASYNC110 - uvicorn only flips this flag
                    await asyncio.sleep(0.01)
                await measure(args, nc, trust=trust, gateway=gateway, caller=caller, space=space,
                              url=f"http://127.0.0.1:{port}")
            server.should_exit = True
            await serve
            await registry.stop()
        finally:
            await nc.close()
            broker.stop()


async def measure(args: argparse.Namespace, nc: Nats, *, trust: LocalTrust, gateway: Gateway,
                  caller: Caller, space: Space, url: str) -> None:
    native = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                    space=space)
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 limits=httpx.Limits(max_connections=args.clients)) as http, \
            McpClient(f"{url}/mcp") as mcp:

        async def via_nats() -> None:
            reply = await native.call("moon.dispatch", BODY)
            assert not hasattr(reply, "reason"), reply

        async def via_http() -> None:
            _, sealed = gateway.seal(caller, "moon.dispatch", BODY)
            answer = await http.post("/v1/protocol/moon.dispatch", content=sealed,
                                     headers=NATIVE)
            assert answer.status_code == 200, answer.text

        async def via_mcp() -> None:
            result = await mcp.call_tool("map.moon.dispatch", {"steps": [
                {"id": "a", "capability": "bench-nobody"}]})
            assert not result.is_error, result.content

        paths: dict[str, Callable[[], Awaitable[None]]] = {
            "nats": via_nats, "http": via_http, "mcp": via_mcp}
        for call in paths.values():  # warm: connections, key caches, JIT-less but cold paths
            for _ in range(20):
                await call()
        latency: dict[str, list[float]] = defaultdict(list)
        throughput: dict[str, list[float]] = defaultdict(list)
        for round_ in range(args.rounds):
            # Interleaved call by call: a load spike from the machine's other tenants lands on
            # all three paths, not on whichever happened to be measured then.
            for _ in range(args.n):
                for name, call in paths.items():
                    start = time.perf_counter()
                    await call()
                    latency[name].append((time.perf_counter() - start) * 1000)
            for name, call in paths.items():
                throughput[name].append(await burst(call, args.clients, args.burst))
            print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{k} p50 {statistics.median(v[-args.n:]):.2f} ms" for k, v in latency.items()),
                flush=True)
    print(f"\nload (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{args.rounds} rounds x {args.n} sequential, {args.clients} clients x {args.burst}")
    print(f"{'path':<6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for name in paths:
        print(f"{name:<6} {statistics.median(latency[name]):8.2f} {pct(latency[name], 0.99):8.2f} "
              f"{statistics.median(throughput[name]):8.0f}")
    added = statistics.median(latency["http"]) - statistics.median(latency["nats"])
    print(f"HTTP adds {added:.2f} ms p50 over native (target <= 1 ms): "
          f"{'met' if added <= 1.0 else 'NOT met'}")
    added = statistics.median(latency["mcp"]) - statistics.median(latency["nats"])
    print(f"MCP adds {added:.2f} ms p50 over native")


async def burst(call: Callable[[], Awaitable[None]], clients: int, total: int) -> float:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return total / (time.perf_counter() - start)


if __name__ == "__main__":
    asyncio.run(main())
