"""MOON's methods behind the envelope gate: dispatch, checkpoint, compensate, replay.

Each handler turns a verified envelope into one command for the engine; the request id is
the command id, so a re-sent request decides nothing new and gets the first answer back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec
from nats.aio.client import Client as Nats

from envelope.gate import Gate
from envelope.keys import Signer
from envelope.seal import Opened, Trust
from moon import replay
from moon.engine import Engine, now_ms
from moon.journal import journal
from moon.workflow import WorkflowState
from streams.decider import Decided
from streams.moon_events import (
    CheckpointStep,
    Compensate,
    Dispatch,
    MoonEvent,
    OnFailure,
    StepSpec,
)
from streams.replies import Reason, Refusal

__all__ = [
    "CheckpointRequest",
    "CompensateRequest",
    "DispatchReply",
    "DispatchRequest",
    "ReplayReply",
    "ReplayRequest",
    "moon_gate",
]

T = TypeVar("T")


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tokens: int | None = None
    deadline_ms: int | None = None


class DispatchRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of moon.dispatch: a DAG (usually a MAESTRO plan) and its constraints."""

    steps: tuple[StepSpec, ...]
    workflow_id: str | None = None
    budget: Budget | None = None
    plan_id: str | None = None
    plan_revision: int = 0
    on_failure: OnFailure = "wait"
    intent: str = ""


class DispatchReply(msgspec.Struct, frozen=True):
    workflow_id: str
    version: int
    status: str


class CompensateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    workflow_id: str
    reason: str = ""


class CheckpointRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    workflow_id: str
    step: str
    attempt: int
    state: bytes


class ReplayRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    workflow_id: str
    to_seq: int | None = None
    verify: bool = False


class ReplayReply(msgspec.Struct, frozen=True):
    workflow_id: str
    seq: int
    status: str
    state: bytes  # the folded WorkflowState as JSON
    mismatches: int = 0


def _decode(body: bytes, type_: type[T]) -> T | Refusal:
    try:
        return msgspec.msgpack.decode(body, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
        return Refusal(Reason.MALFORMED, str(error))


def _reply(workflow_id: str, outcome: Decided[MoonEvent, WorkflowState] | Refusal
           ) -> DispatchReply | Refusal:
    if isinstance(outcome, Refusal):
        return outcome
    return DispatchReply(workflow_id=workflow_id, version=outcome.version,
                         status=outcome.state.status)


def moon_gate(
    nc: Nats, engine: Engine, *, signer: Signer, trust: Trust, clock: Callable[[], int] = now_ms
) -> Gate:
    gate = Gate(nc, service="moon", signer=signer, trust=trust, space=engine.space)

    async def dispatch(opened: Opened) -> DispatchReply | Refusal:
        request = _decode(opened.body, DispatchRequest)
        if isinstance(request, Refusal):
            return request
        at = clock()
        deadline = request.budget.deadline_ms if request.budget else None
        command = Dispatch(
            command_id=opened.request_id,
            workflow_id=request.workflow_id or f"wf-{opened.request_id}",
            at_ms=at,
            steps=request.steps,
            deadline_ms=at + deadline if deadline else None,
            budget_tokens=request.budget.tokens if request.budget else None,
            plan_id=request.plan_id,
            plan_revision=request.plan_revision,
            on_failure=request.on_failure,
        )
        # A caller retries a request whose first handling may have died after the append:
        # `redelivered` makes a decision of nothing new re-send the workflow's timers and orders.
        return _reply(command.workflow_id, await engine.submit(command, redelivered=True))

    async def compensate(opened: Opened) -> DispatchReply | Refusal:
        request = _decode(opened.body, CompensateRequest)
        if isinstance(request, Refusal):
            return request
        return _reply(request.workflow_id, await engine.submit(Compensate(
            command_id=opened.request_id, workflow_id=request.workflow_id, at_ms=clock(),
            reason=request.reason or f"requested by {opened.caller}",
        ), redelivered=True))

    async def checkpoint(opened: Opened) -> DispatchReply | Refusal:
        request = _decode(opened.body, CheckpointRequest)
        if isinstance(request, Refusal):
            return request
        return _reply(request.workflow_id, await engine.submit(CheckpointStep(
            command_id=opened.request_id, workflow_id=request.workflow_id, at_ms=clock(),
            step=request.step, attempt=request.attempt, state=request.state,
        )))

    async def replay_(opened: Opened) -> ReplayReply | Refusal:
        request = _decode(opened.body, ReplayRequest)
        if isinstance(request, Refusal):
            return request
        loaded = await journal(engine.js, engine.space).read(request.workflow_id,
                                                             upto=request.to_seq)
        if not loaded.items:
            return Refusal(Reason.UNKNOWN_WORKFLOW, request.workflow_id)
        decisions = [item.value for item in loaded.items]
        state = replay.fold(decisions)
        bad = len(replay.verify(decisions)) if request.verify else 0
        return ReplayReply(workflow_id=request.workflow_id, seq=loaded.version,
                           status=state.status, state=msgspec.json.encode(state), mismatches=bad)

    gate.route("dispatch", dispatch)
    gate.route("compensate", compensate, capability="moon:admin")
    gate.route("checkpoint", checkpoint)
    gate.route("replay", replay_, capability="moon:read")
    return gate
