"""MOON's trust inside the walls on one machine, from the data dir's keys (envelope/local.py).

`moon serve`, `moon worker`, `maestro up`/`demo` and the tests build their walls, registry and
executor identities here; a deployment brings its own keys and names its engines, planners and
registrars the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from nats.js import JetStreamContext

from envelope.keys import Signer
from envelope.local import LocalTrust, executor_key
from envelope.registry import Registration, Registry, register
from moon.authority import Walls
from streams.subjects import Space

__all__ = ["local_registry", "local_walls", "register_local_executor"]


def local_walls(trust: LocalTrust, *, writer: bool = False) -> Walls:
    """The engine's walls (`writer=True`: it signs with the data dir's MOON key) or a reader's."""
    return Walls(engines=trust.engines, planners=trust.planners, registrars=trust.registrars,
                 signer=trust.moon if writer else None)


async def local_registry(js: JetStreamContext, space: Space, trust: LocalTrust) -> Registry:
    return await Registry(js, registrars=trust.registrars, space=space).start()


async def register_local_executor(
    js: JetStreamContext, space: Space, trust: LocalTrust, data_dir: Path, executor_id: str, *,
    capabilities: Iterable[str] = (), trust_level: float = 0.5, now_ms: int = 0,
) -> Signer:
    """The executor's key (made on first use) and its registry entry, signed by the operator:
    what an operator does once per executor, done for a local one on start."""
    signer = executor_key(data_dir, executor_id)
    await register(js, trust.operator, Registration(
        executor=executor_id, did=signer.did, capabilities=tuple(sorted(set(capabilities))),
        trust=trust_level, issued_at_ms=now_ms), space=space)
    return signer
