"""MOON's methods behind the envelope gate: dispatch, checkpoint, compensate, replay.

Each handler turns a verified envelope into one command for the engine; the request id is
the command id, so a re-sent request decides nothing new and gets the first answer back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec
from nats.aio.client import Client as Nats

from envelope import later
from envelope.body import decode_body
from envelope.gate import Gate
from envelope.keys import Signer
from envelope.seal import Opened, Trust
from moon import replay
from moon.authority import FromGate
from moon.engine import Engine
from moon.journal import journal
from moon.workflow import MAX_STEPS, WorkflowState
from streams.decider import Decided
from streams.ids import check_id
from streams.moon_events import (
    Cancel,
    CheckpointStep,
    Compensate,
    Decision,
    Dispatch,
    MoonEvent,
    OnFailure,
    StepSpec,
)
from streams.replies import Reason, Refusal
from streams.store import Loaded, Unreadable
from streams.tracing import child_traceparent, gate_span

__all__ = [
    "CAPABILITIES",
    "CancelRequest",
    "CheckpointRequest",
    "CompensateRequest",
    "DispatchReply",
    "DispatchRequest",
    "ForkRequest",
    "ReplayReply",
    "ReplayRequest",
    "capability_of",
    "moon_gate",
]

T = TypeVar("T")
# The methods a caller's grant must name by something other than `moon:<method>`: every caller
# of the gate (the CLI's operator calls, the surfaces) seals its request for these.
CAPABILITIES: dict[str, str] = {"compensate": "moon:admin", "fork": "moon:admin",
                                "replay": "moon:read"}


def capability_of(method: str) -> str:
    """What a request to `moon.<method>` must be sealed for: the gate's default, `moon:<method>`,
    unless the route names another."""
    return CAPABILITIES.get(method, f"moon:{method}")


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


class CancelRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    workflow_id: str
    reason: str = ""


class ForkRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A new workflow that starts from `workflow_id`'s state at journal sequence `at_seq`,
    with the steps completed by then carried over (an operator's action: moon:admin)."""

    workflow_id: str
    at_seq: int
    new_workflow_id: str


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
    return decode_body(body, type_)


def _reply(workflow_id: str, outcome: Decided[MoonEvent, WorkflowState] | Refusal
           ) -> DispatchReply | Refusal:
    if isinstance(outcome, Refusal):
        return outcome
    return DispatchReply(workflow_id=workflow_id, version=outcome.version,
                         status=outcome.state.status)


def moon_gate(
    nc: Nats, engine: Engine, *, signer: Signer, trust: Trust,
    clock: Callable[[], int] | None = None, shared_limits: bool = True,
) -> Gate:
    """MOON's methods behind the gate. Each handler's command reaches the engine as coming from
    the gate, with the caller and the capability the route checked: the engine then holds a
    workflow id to the caller that dispatched it (moon/authority.py)."""
    # Replicas of the engine share nonces, treaty rates and budgets (KV): two of them never
    # double a caller's allowance.
    gate = Gate(nc, service="moon", signer=signer, trust=trust, space=engine.space,
                shared_limits=shared_limits)
    now = clock or engine.clock

    def source(opened: Opened, capability: str) -> FromGate:
        return FromGate(caller=opened.caller, capability=capability)

    async def dispatch(opened: Opened) -> DispatchReply | Refusal:
        request = _decode(opened.body, DispatchRequest)
        if isinstance(request, Refusal):
            return request
        workflow_id = request.workflow_id or f"wf-{opened.request_id}"
        if refused := check_id(workflow_id, "workflow_id"):
            return refused
        if refused := _bounded(request.steps):
            return refused
        at = now()
        deadline = request.budget.deadline_ms if request.budget else None
        command = Dispatch(
            command_id=opened.request_id,
            workflow_id=workflow_id,
            at_ms=at,
            steps=request.steps,
            deadline_ms=at + deadline if deadline else None,
            budget_tokens=request.budget.tokens if request.budget else None,
            plan_id=request.plan_id,
            plan_revision=request.plan_revision,
            on_failure=request.on_failure,
            owner=opened.caller,
            traceparent=child_traceparent(opened.traceparent, gate_span("moon", opened.request_id)),
            audit=later.evidence(),
        )
        # A caller retries a request whose first handling may have died after the append:
        # `redelivered` makes a decision of nothing new re-send the workflow's timers and orders.
        return _reply(workflow_id, await engine.submit(
            command, source=source(opened, "moon:dispatch"), redelivered=True))

    async def compensate(opened: Opened) -> DispatchReply | Refusal:
        request = _about_workflow(opened, CompensateRequest)
        if isinstance(request, Refusal):
            return request
        return _reply(request.workflow_id, await engine.submit(Compensate(
            command_id=opened.request_id, workflow_id=request.workflow_id, at_ms=now(),
            reason=request.reason or f"requested by {opened.caller}",
        ), source=source(opened, "moon:admin"), redelivered=True))

    async def cancel(opened: Opened) -> DispatchReply | Refusal:
        request = _about_workflow(opened, CancelRequest)
        if isinstance(request, Refusal):
            return request
        return _reply(request.workflow_id, await engine.submit(Cancel(
            command_id=opened.request_id, workflow_id=request.workflow_id, at_ms=now(),
            reason=request.reason or f"cancelled by {opened.caller}",
        ), source=source(opened, "moon:cancel"), redelivered=True))

    async def checkpoint(opened: Opened) -> DispatchReply | Refusal:
        request = _about_workflow(opened, CheckpointRequest)
        if isinstance(request, Refusal):
            return request
        return _reply(request.workflow_id, await engine.submit(CheckpointStep(
            command_id=opened.request_id, workflow_id=request.workflow_id, at_ms=now(),
            step=request.step, attempt=request.attempt, state=request.state,
        ), source=source(opened, "moon:checkpoint")))

    async def fork(opened: Opened) -> DispatchReply | Refusal:
        request = _decode(opened.body, ForkRequest)
        if isinstance(request, Refusal):
            return request
        for value, what in ((request.workflow_id, "workflow_id"),
                            (request.new_workflow_id, "new_workflow_id")):
            if refused := check_id(value, what):
                return refused
        loaded = await _read(engine, request.workflow_id, request.at_seq)
        if isinstance(loaded, Refusal):
            return loaded
        state = replay.fold(item.value for item in loaded.items)
        command = msgspec.structs.replace(
            replay.fork(state, request.new_workflow_id, now()),
            command_id=opened.request_id, owner=opened.caller, audit=later.evidence(),
            traceparent=child_traceparent(opened.traceparent, gate_span("moon", opened.request_id)))
        return _reply(request.new_workflow_id, await engine.submit(
            command, source=source(opened, "moon:admin"), redelivered=True))

    async def replay_(opened: Opened) -> ReplayReply | Refusal:
        request = _about_workflow(opened, ReplayRequest)
        if isinstance(request, Refusal):
            return request
        loaded = await _read(engine, request.workflow_id, request.to_seq)
        if isinstance(loaded, Refusal):
            return loaded
        decisions = [item.value for item in loaded.items]
        state = replay.fold(decisions)
        bad = len(replay.verify(decisions)) if request.verify else 0
        return ReplayReply(workflow_id=request.workflow_id, seq=loaded.version,
                           status=state.status, state=msgspec.json.encode(state), mismatches=bad)

    async def audit_again(command: Dispatch, seq: int, state: WorkflowState) -> bool:
        # What `_reply` answered the dispatch (or fork) journaled at `seq` with.
        if command.audit is None or command.owner is None:
            return False
        return await gate.audit_journaled(command.command_id, command.owner, command.audit,
                                          DispatchReply(workflow_id=command.workflow_id,
                                                        version=seq, status=state.status))

    engine.audit_again = audit_again

    # Each of these submits one command whose id is the request id: the journal decides it once.
    # Every route's capability from capability_of, which the CLI and the surfaces seal for.
    gate.route("dispatch", dispatch, capability=capability_of("dispatch"), idempotent=True)
    gate.route("compensate", compensate, capability=capability_of("compensate"), idempotent=True)
    gate.route("cancel", cancel, capability=capability_of("cancel"), idempotent=True)
    gate.route("checkpoint", checkpoint, capability=capability_of("checkpoint"), idempotent=True)
    gate.route("fork", fork, capability=capability_of("fork"), idempotent=True)
    gate.route("replay", replay_, capability=capability_of("replay"))
    return gate


W = TypeVar("W", CompensateRequest, CancelRequest, CheckpointRequest, ReplayRequest)


def _about_workflow(opened: Opened, type_: type[W]) -> W | Refusal:
    """A request naming an existing workflow: decoded, and its id checked before any use."""
    request = _decode(opened.body, type_)
    if isinstance(request, Refusal):
        return request
    return check_id(request.workflow_id, "workflow_id") or request


def _bounded(steps: tuple[StepSpec, ...]) -> Refusal | None:
    if len(steps) > MAX_STEPS:
        return Refusal(Reason.OVERSIZE, f"{len(steps)} steps: at most {MAX_STEPS} per dispatch")
    return None


async def _read(engine: Engine, workflow_id: str, upto: int | None) -> Loaded[Decision] | Refusal:
    try:
        loaded = await journal(engine.js, engine.space, engine.walls).read(workflow_id, upto=upto)
    except Unreadable as bad:
        return Refusal(Reason.QUARANTINED, str(bad), evidence={"seq": str(bad.seq)})
    if not loaded.items:
        return Refusal(Reason.UNKNOWN_WORKFLOW, workflow_id)
    return loaded
