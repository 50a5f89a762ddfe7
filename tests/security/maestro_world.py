"""What the MAESTRO attack tests share: tenants with their own grants, a plan MAESTRO allocated,
and a workflow journal written the way the engine writes it (a signed Decision per message),
so the replanner can be attacked without a running engine in the way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence

import msgspec
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from envelope.client import Client
from envelope.grants import mint_grant
from envelope.keys import Signer, signer_from_seed
from envelope.local import LocalTrust
from envelope.statement import DECISION, sign_statement
from maestro.goal import Budget, CapabilityOffer, Goal, Offer, Step
from maestro.service import Maestro, Market
from moon.journal import DECISIONS
from streams.moon_events import Decision, Deviation, Dispatch, RetryPolicy, StepSpec
from streams.plan_events import PlanAllocated
from streams.subjects import Space

# x1 alone can run `solo`: excluding it leaves no plan, so MAESTRO compensates the workflow.
OFFERS = (
    Offer(executor="x1", organisation="acme", capacity=2, capabilities=(
        CapabilityOffer("solo", duration_ms=300, rate=1),
        CapabilityOffer("work", duration_ms=300, rate=1))),
    Offer(executor="x2", organisation="acme", capacity=2, capabilities=(
        CapabilityOffer("work", duration_ms=300, rate=5),)),
)
SOLO = Goal(name="solo", deadline_ms=60_000, budget=Budget(tokens=10_000),
            steps=(Step(id="s", capability="solo", duration_ms=300),))
WORK = Goal(name="work", deadline_ms=60_000, budget=Budget(tokens=10_000),
            steps=(Step(id="w", capability="work", duration_ms=300),))


def now_ms() -> int:
    return int(time.time() * 1000)


def stranger() -> Signer:
    return signer_from_seed(os.urandom(32))


def grant(trust: LocalTrust, to: Signer, capability: str) -> bytes:
    at = now_ms()
    return mint_grant(trust.root, audience=to.did, capability=capability,
                      not_before_ms=at - 60_000, expiry_ms=at + 3_600_000, nonce=os.urandom(16))


def tenant(nc: Nats, trust: LocalTrust, space: Space, capability: str = "maestro:*") -> Client:
    """A caller of its own: a fresh key with one grant from the organisation root."""
    key = stranger()
    return Client(nc, key, trust.services, grant=(grant(trust, key, capability),), space=space)


def maestro(nc: Nats, trust: LocalTrust, space: Space, **options: object) -> Maestro:
    async def offers() -> Sequence[Offer]:
        return OFFERS

    return Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, offers, space=space,
                   market=Market(bid_timeout_s=0), **options)  # type: ignore[arg-type]


def engine_signed(signer: Signer, decision: Decision) -> bytes:
    """A MOON journal message as the engine writes it."""
    return sign_statement(signer, DECISION, DECISIONS.encode(decision))


def unsigned(decision: Decision) -> bytes:
    """A MOON journal message as anyone with publish rights can write it."""
    return DECISIONS.encode(decision)


def dispatched(wf: str, plan_id: str, goal: Goal, executor: str) -> Decision:
    from moon.workflow import decide, initial  # noqa: PLC0415

    command = Dispatch(
        command_id=f"dispatch-{wf}", workflow_id=wf, at_ms=now_ms(), plan_id=plan_id,
        steps=tuple(StepSpec(id=s.id, capability=s.capability, executor=executor,
                             retry=RetryPolicy(maximum_attempts=2)) for s in goal.steps))
    events = decide(command, initial)
    assert isinstance(events, list), events
    return Decision(command=command, events=events)


def deviation(wf: str, plan_id: str, step: str, executor: str, *, kind: str = "failed",
              seq: int = 0) -> Decision:
    """A deviation decision; the command stands in for whatever report caused it."""
    from streams.moon_events import FailStep  # noqa: PLC0415

    at = now_ms()
    event = Deviation(at_ms=at, workflow_id=wf, kind=kind,  # type: ignore[arg-type]
                      step=step, attempt=1, executor=executor, detail="lost", plan_id=plan_id)
    return Decision(command=FailStep(command_id=f"fail-{wf}-{seq}", workflow_id=wf, at_ms=at,
                                     step=step, attempt=1, error="lost"),
                    events=[event])


async def journal(js: JetStreamContext, space: Space, wf: str, kind: str, data: bytes) -> int:
    ack = await js.publish(space.subject(f"moon.wf.{wf}.{kind}"), data)
    return int(ack.seq)


async def allocated(m: Maestro, goal: Goal, plan_id: str, *, allocate_only: bool = False
                    ) -> str:
    """A plan MAESTRO proposed (unless a caller did) and allocated; the dispatch itself is the
    test's to journal."""
    wf = f"wf-{plan_id}"
    if not allocate_only:
        outcome = await m.plan(goal, plan_id=plan_id)
        assert outcome.decision == "planned", outcome.reasons
    recorded = await m._record(plan_id, f"allocate-{plan_id}", PlanAllocated(
        at_ms=now_ms(), plan_id=plan_id, workflow_id=wf, orders=()))
    assert not isinstance(recorded, Exception)
    return wf


class Commands:
    """Every command put on MOON_CMD in the space, by workflow: what MAESTRO made MOON do."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.arrived = asyncio.Condition()

    async def _on(self, msg: Msg) -> None:
        async with self.arrived:
            self.seen.append(msg.subject)
            self.arrived.notify_all()

    def for_workflow(self, wf: str) -> list[str]:
        return [s for s in self.seen if f".cmd.{wf}." in s]

    async def wait_for(self, wf: str, within_s: float = 30) -> list[str]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: self.for_workflow(wf)),
                                   within_s)
        return self.for_workflow(wf)


@contextlib.asynccontextmanager
async def commands(nc: Nats, space: Space) -> AsyncIterator[Commands]:
    seen = Commands()
    sub = await nc.subscribe(space.subject("moon.cmd.>"), cb=seen._on)
    await nc.flush()
    try:
        yield seen
    finally:
        await sub.unsubscribe()


def body(value: object) -> bytes:
    return msgspec.json.encode(value)
