"""Health over NATS: each service is a NATS micro service.

`$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` (optionally `.<name>` and `.<name>.<id>`) answer
as for any micro service, so `nats micro ls|info|stats` works; the `health` endpoint on
`health.<name>` (space-prefixed) runs the service's readiness checks and answers a JSON
`Health`. The stats reply carries the process's metric counters (streams/metrics.py) as the
endpoint's `data`, so counters are readable without Prometheus.

Names: `moon-engine`, `moon-worker`, `maestro`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from streams import metrics
from streams.subjects import Space, health

__all__ = ["Check", "Health", "health_service", "probe"]

VERSION = "0.1.0"

# A check answers None when fine, else why not (a short sentence for the operator).
Check = Callable[[], Awaitable[str | None]]


class Health(msgspec.Struct, frozen=True):
    service: str
    id: str
    ok: bool
    uptime_s: float
    failing: dict[str, str] = {}
    metadata: dict[str, str] = {}


CHECK_S = 1.0  # each check's budget: the answer must beat a caller's 2 s probe


async def _jetstream(nc: Client) -> str | None:
    try:
        await nc.jetstream(timeout=CHECK_S).account_info()
    except Exception as error:  # any failure to reach JetStream is the answer, not a crash
        return f"jetstream unreachable: {type(error).__name__}"
    return None


async def _run(check: Check) -> str | None:
    try:
        return await asyncio.wait_for(check(), CHECK_S)
    except TimeoutError:
        return f"no answer in {CHECK_S:g} s"
    except Exception as error:  # a broken check is a failing check, and says why
        return f"{type(error).__name__}: {error}"


async def health_service(
    nc: Client,
    name: str,
    *,
    space: Space,
    checks: Mapping[str, Check] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Service:
    """Start the micro service; stop it with `await service.stop()`. Checks run per request."""
    started = time.monotonic()
    meta = {"space": space.prefix, **(metadata or {})}
    all_checks: dict[str, Check] = {"jetstream": lambda: _jetstream(nc), **(checks or {})}

    def stats(_: EndpointStats) -> Any:
        return metrics.snapshot()

    service = await add_service(
        nc, name=name, version=VERSION, metadata=meta, stats_handler=stats,
        description=f"{name}: readiness on {space.subject(health(name))}",
    )

    async def handle(request: Request) -> None:
        # Concurrently and bounded: when JetStream is down the endpoint still answers, with why.
        answers = await asyncio.gather(*(_run(check) for check in all_checks.values()))
        failing = {key: why for key, why in zip(all_checks, answers, strict=True) if why}
        answer = Health(service=name, id=service.id, ok=not failing,
                        uptime_s=round(time.monotonic() - started, 3), failing=failing,
                        metadata=meta)
        await request.respond(msgspec.json.encode(answer))

    # Queue-grouped like every micro endpoint: one instance of the kind answers; one replica's
    # own health is `$SRV.PING|STATS.<name>.<id>` (liveness) or its log.
    await service.add_endpoint(name="health", subject=space.subject(health(name)),
                               handler=handle)
    return service


async def probe(nc: Client, name: str, *, space: Space, timeout_s: float = 2.0) -> Health:
    """Ask one instance of `name` for its health (the first to answer)."""
    reply = await nc.request(space.subject(health(name)), b"", timeout=timeout_s)
    return msgspec.json.decode(reply.data, type=Health)
