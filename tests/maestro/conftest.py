"""Shared builders for the planner tests: tiny goals whose optimal plans are checked by hand."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from envelope.keys import Signer, signer_from_seed
from envelope.registry import Registration, Registry, register
from maestro.goal import Budget, CapabilityOffer, Goal, Offer, Step
from streams.subjects import Space

PSPLIB = Path(__file__).parents[2].parent / "shared" / "benchmarks" / "psplib"
EXAMPLES = Path(__file__).parents[2] / "examples"


def offer(
    executor: str,
    *caps: tuple[str, int, int],
    org: str = "acme",
    trust: float = 1.0,
    reliability: float = 1.0,
    capacity: int = 1,
) -> Offer:
    """An offer quoting (capability, duration_ms, rate) triples."""
    return Offer(
        executor=executor,
        organisation=org,
        trust=trust,
        reliability=reliability,
        capacity=capacity,
        capabilities=tuple(CapabilityOffer(c, duration_ms=d, rate=r) for c, d, r in caps),
    )


def chain(deadline_ms: int | None = None, cost: int | None = None, **kw: object) -> Goal:
    """a -> b, both capability 'work'."""
    return Goal(
        name="chain",
        steps=(Step("a", "work"), Step("b", "work", needs=("a",))),
        deadline_ms=deadline_ms,
        budget=Budget(cost=cost),
        **kw,  # type: ignore[arg-type]
    )


SLOW_FAST = (offer("slow", ("work", 10, 1)), offer("fast", ("work", 5, 10)))


@pytest.fixture(name="psplib_dir")
def _psplib_dir() -> Path:
    if not PSPLIB.is_dir():
        pytest.skip(f"PSPLIB data not found at {PSPLIB} (expected ../shared next to the repo)")
    return PSPLIB


class Executors:
    """Executors with keys of their own, registered by a registrar the registry trusts."""

    def __init__(self, registry: Registry, keys: dict[str, Signer], registrar: Signer) -> None:
        self.registry = registry
        self.keys = keys
        self.registrar = registrar

    def key(self, executor: str) -> Signer:
        return self.keys[executor]


@contextlib.asynccontextmanager
async def executors(js: JetStreamContext, space: Space, *names: str, trust: float = 1.0
                    ) -> AsyncIterator[Executors]:
    """Register `names` (trust 1.0: what `offer` claims, so verified offers compare equal)."""
    registrar = signer_from_seed(os.urandom(32))
    keys = {name: signer_from_seed(os.urandom(32)) for name in names}
    for name, key in keys.items():
        await register(js, registrar, Registration(name, key.did, trust=trust), space=space)
    registry = await Registry(js, registrars={registrar.did}, space=space).start()
    try:
        yield Executors(registry, keys, registrar)
    finally:
        await registry.stop()
