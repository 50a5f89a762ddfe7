"""Trust inside the walls for tests: one data dir of keys per namespace (as `moon serve` and
`moon worker` would find under MAESTRO_HOME), the engine's walls, registered executors, and the
gate's source for commands a test submits as the operator would through the gate."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterable
from pathlib import Path

from nats.aio.client import Client
from nats.js import JetStreamContext

from envelope.client import Client as EnvelopeClient
from envelope.keys import Signer
from envelope.local import LocalTrust, local_trust
from envelope.registry import Registration, Registry
from moon.authority import FromExecutor, FromGate, Walls
from moon.gateway import Budget, DispatchReply, DispatchRequest
from moon.local import local_registry, local_walls, register_local_executor
from streams.moon_events import Dispatch
from streams.replies import Refusal
from streams.subjects import Space

ROOT = Path(tempfile.gettempdir()) / "moon-test-homes"


def home_for(space: Space) -> Path:
    """The data dir whose keys the engine and executors of this namespace use."""
    path = ROOT / (space.prefix or "root")
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def _trust(home: Path) -> LocalTrust:
    return local_trust(home)


def trust_for(space: Space) -> LocalTrust:
    return _trust(home_for(space))


def walls_for(space: Space, *, writer: bool = True) -> Walls:
    return local_walls(trust_for(space), writer=writer)


def operator(space: Space) -> FromGate:
    """What the gate hands the engine for the data dir's operator (every capability)."""
    return FromGate(caller=trust_for(space).operator.did, capability="moon:admin")


async def registry_for(js: JetStreamContext, space: Space) -> Registry:
    return await local_registry(js, space, trust_for(space))


async def executor(js: JetStreamContext, space: Space, executor_id: str,
                   capabilities: Iterable[str] = ()) -> Signer:
    """Register an executor as an operator does, and give back its key."""
    return await register_local_executor(js, space, trust_for(space), home_for(space),
                                         executor_id, capabilities=capabilities)


def request_from(command: Dispatch) -> DispatchRequest:
    """The gate's request for what a test built as a Dispatch command."""
    budget = None
    if command.budget_tokens is not None or command.deadline_ms is not None:
        budget = Budget(tokens=command.budget_tokens,
                        deadline_ms=command.deadline_ms - command.at_ms
                        if command.deadline_ms else None)
    return DispatchRequest(steps=command.steps, workflow_id=command.workflow_id, budget=budget,
                           plan_id=command.plan_id, plan_revision=command.plan_revision,
                           on_failure=command.on_failure)


def operator_client(nc: Client, space: Space) -> EnvelopeClient:
    trust = trust_for(space)
    return EnvelopeClient(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                          space=space, timeout_s=10, ttl_ms=120_000)


async def send_dispatch(nc: Client, space: Space, command: Dispatch) -> None:
    """A durable dispatch, as a user's fire-and-forget intent: once JetStream acknowledges it,
    it is the gate's to handle, whether or not an engine is running now."""
    await operator_client(nc, space).publish_intent(
        "moon.dispatch", request_from(command), request_id=command.command_id)


async def call_dispatch(nc: Client, space: Space, command: Dispatch) -> DispatchReply | Refusal:
    reply = await operator_client(nc, space).call("moon.dispatch", request_from(command),
                                                  request_id=command.command_id)
    return reply if isinstance(reply, Refusal) else reply.result(DispatchReply)


async def as_executor(js: JetStreamContext, space: Space, executor_id: str,
                      capabilities: Iterable[str] = ()) -> FromExecutor:
    """What the engine hands `authorize` for a report this registered executor signed."""
    signer = await executor(js, space, executor_id, capabilities)
    return FromExecutor(Registration(executor=executor_id, did=signer.did,
                                     capabilities=tuple(capabilities)))
