"""A running system for the surface tests: MOON engine and gate, MAESTRO and its gate, executors,
all in-process on the test's namespace; and the surfaces' servers on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import uvicorn
from nats.aio.client import Client as Nats

from envelope.local import LocalTrust
from maestro.gateway import maestro_gate
from maestro.goal import Goal, Offer, load_goal, load_offers
from maestro.service import Maestro, Market
from maestro.solve import SolveOptions
from moon.engine import Engine
from moon.gateway import moon_gate
from moon.service import running
from moon.worker import Result, StepContext
from streams.replies import Refusal
from streams.subjects import Space
from surfaces.forward import Caller, Gateway
from surfaces.reads import Reads

from .. import walls as tw
from ..moon.engine_world import new_engine, new_worker

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def example_goal() -> Goal:
    goal = load_goal(EXAMPLES / "goal.yaml")
    assert not isinstance(goal, Refusal)
    return goal


def example_offers() -> tuple[Offer, ...]:
    offers = load_offers(EXAMPLES / "executors.yaml")
    assert not isinstance(offers, Refusal)
    return tuple(offers)


def goal_json(goal: Goal) -> dict:
    return msgspec.to_builtins(goal)


@dataclass
class World:
    nc: Nats
    space: Space
    trust: LocalTrust
    engine: Engine
    maestro: Maestro
    gateway: Gateway
    reads: Reads

    @property
    def operator(self) -> Caller:
        return Caller(self.trust.operator, (self.trust.operator_grant,))


def _handler(executor: str):
    async def run(ctx: StepContext) -> Result:
        return Result(output=f"{executor} did {ctx.order.step}".encode(), tokens=1)

    return run


@contextlib.asynccontextmanager
async def world(nc: Nats, space: Space, tmp_path: Path) -> AsyncIterator[World]:
    """Both services behind their gates and one executor per example offer (plus `work`)."""
    trust = tw.trust_for(space)  # the keys the engine's walls and the registry trust
    offers = example_offers()

    async def board() -> tuple[Offer, ...]:
        return offers

    engine = await new_engine(nc, space)
    maestro = Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, board,
                      space=space, market=Market(bid_timeout_s=0), registry=engine.registry,
                      options=SolveOptions(time_limit_s=1.0), anticipation_samples=50)
    moon = moon_gate(nc, engine, signer=trust.moon, trust=trust.trust_for(trust.moon))
    planner = maestro_gate(nc, maestro, signer=trust.maestro,
                           trust=trust.trust_for(trust.maestro))
    workers = [await new_worker(nc, space, {c.capability: _handler(o.executor)
                                            for c in o.capabilities}, o.executor,
                                capacity=o.capacity) for o in offers]
    workers.append(await new_worker(nc, space, {"work": _handler("x1")}, "x1"))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running(lambda r: engine.run(ready=r), engine.stop))
        await stack.enter_async_context(moon.serving())
        await stack.enter_async_context(planner.serving())
        for w in workers:
            await stack.enter_async_context(running(w.run_until_ready, w.stop))
        gateway = Gateway(nc, trust.services, space=space)
        reads = Reads(nc.jetstream(), space, engines=trust.engines, planners=trust.planners)
        yield World(nc, space, trust, engine, maestro, gateway, reads)
    await engine.registry.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(app, port: int | None = None) -> AsyncIterator[str]:
    """A real uvicorn on a free loopback port for the block; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)  # uvicorn offers no started event to await
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def step(id_: str, needs: tuple[str, ...] = ()) -> dict:
    return {"id": id_, "capability": "work", "needs": list(needs),
            "retry": {"maximum_attempts": 5, "initial_interval_ms": 10}}


@dataclass(frozen=True)
class Partner:
    """Another organisation: its own root, an agent with a grant from it, and maybe a treaty."""

    root: object
    agent: object
    grant: bytes
    treaty: bytes | None

    def caller(self, *, with_treaty: bool = True) -> Caller:
        return Caller(self.agent, (self.grant,), self.treaty if with_treaty else None)


def partner(trust: LocalTrust, *, scope=("maestro:*", "moon:*"), rate_per_s: float = 100.0,
            burst: int = 100) -> Partner:
    import os  # noqa: PLC0415
    import time  # noqa: PLC0415

    from envelope.grants import mint_grant  # noqa: PLC0415
    from envelope.keys import signer_from_seed  # noqa: PLC0415
    from envelope.treaty import Treaty, countersign, propose_treaty  # noqa: PLC0415

    root, agent = signer_from_seed(os.urandom(32)), signer_from_seed(os.urandom(32))
    now = int(time.time() * 1000)
    grant = mint_grant(root, audience=agent.did, capability="*", not_before_ms=now - 60_000,
                       expiry_ms=now + 3_600_000, nonce=os.urandom(16))
    terms = Treaty(host=trust.root.did, partner=root.did, scope=tuple(scope),
                   rate_per_s=rate_per_s, burst=burst, not_before_ms=now - 60_000,
                   expiry_ms=now + 3_600_000, nonce=os.urandom(16))
    treaty = countersign(root, propose_treaty(trust.root, terms))
    return Partner(root, agent, grant, treaty)


def restricted(trust: LocalTrust, capability: str) -> Caller:
    """A caller of our organisation whose grant covers only `capability`."""
    import os  # noqa: PLC0415
    import time  # noqa: PLC0415

    from envelope.grants import mint_grant  # noqa: PLC0415
    from envelope.keys import signer_from_seed  # noqa: PLC0415

    agent = signer_from_seed(os.urandom(32))
    now = int(time.time() * 1000)
    grant = mint_grant(trust.root, audience=agent.did, capability=capability,
                       not_before_ms=now - 60_000, expiry_ms=now + 3_600_000,
                       nonce=os.urandom(16))
    return Caller(agent, (grant,))
