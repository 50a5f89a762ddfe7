"""MAESTRO's methods behind the envelope gate: plan, allocate, replan, ratify.

Every plan id is checked before it names a subject, and belongs to the caller that created it:
only that caller, or one whose grant covers `admin:maestro`, may allocate, ratify or replan it.
`maestro.replan` names a deviation the engine journaled (workflow id and MOON sequence); MAESTRO
reads and verifies it there, so nothing about the deviation comes from the caller.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec
from nats.aio.client import Client as Nats

from envelope.gate import Gate
from envelope.grants import covers
from envelope.keys import Signer
from envelope.seal import Opened, Trust
from maestro.gantt import to_json
from maestro.goal import Goal
from maestro.service import ADMIN, Allocated, Maestro, check_plan_id
from streams.ids import check_id
from streams.replies import Reason, Refusal

__all__ = ["PlanReply", "maestro_gate"]

T = TypeVar("T")


class PlanRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    goal: Goal
    plan_id: str | None = None


class PlanReply(msgspec.Struct, frozen=True):
    plan_id: str
    decision: str
    plan: bytes  # {status, makespan, bound, cost, steps, reasons, anticipation} as JSON


class PlanRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    plan_id: str
    approve: bool = True
    note: str = ""


class ReplanRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A reference to a journaled deviation: the workflow and the MOON stream sequence."""

    workflow_id: str
    seq: int


class StateReply(msgspec.Struct, frozen=True):
    plan_id: str
    status: str
    revision: int = 0


def _decode(body: bytes, type_: type[T]) -> T | Refusal:
    try:
        return msgspec.msgpack.decode(body, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
        return Refusal(Reason.MALFORMED, str(error))


def _admin(opened: Opened) -> bool:
    return covers(opened.chain.capability, ADMIN)


def maestro_gate(nc: Nats, maestro: Maestro, *, signer: Signer, trust: Trust,
                 shared_limits: bool = True) -> Gate:
    # Few at once: each plan is a CP-SAT solve with a wall-clock limit, and solves that share
    # the cores find worse plans in that time. Replicas share nonces, rates and budgets (KV).
    gate = Gate(nc, service="maestro", signer=signer, trust=trust, space=maestro.space,
                concurrency=4, shared_limits=shared_limits)

    async def plan(opened: Opened) -> PlanReply | Refusal:
        request = _decode(opened.body, PlanRequest)
        if isinstance(request, Refusal):
            return request
        if request.plan_id is not None and (refused := check_plan_id(request.plan_id)):
            return refused
        plan_id = request.plan_id or maestro.new_plan_id(opened.caller, opened.request_id)
        outcome = await maestro.plan(request.goal, plan_id=plan_id, command_id=opened.request_id,
                                     caller=opened.caller)
        if outcome.decision == "refused":
            # A refusal is an answer with the same weight as a plan: every reason travels along.
            first = outcome.reasons[0] if outcome.reasons else Refusal(Reason.SOLVER_TIMEOUT)
            return Refusal(first.reason, "; ".join(r.detail for r in outcome.reasons),
                           evidence={"plan_id": plan_id, "reasons": msgspec.json.encode(
                               to_json(outcome.plan, outcome.reasons)).decode()})
        shown = to_json(outcome.plan, outcome.reasons, outcome.anticipation)
        return PlanReply(plan_id=plan_id, decision=outcome.decision,
                         plan=msgspec.json.encode(shown))

    async def allocate(opened: Opened) -> Allocated | Refusal:
        request = _decode(opened.body, PlanRef)
        if isinstance(request, Refusal):
            return request
        if (refused := check_plan_id(request.plan_id)) is not None:
            return refused
        return await maestro.allocate(request.plan_id, command_id=opened.request_id,
                                      caller=opened.caller, admin=_admin(opened))

    async def ratify(opened: Opened) -> StateReply | Refusal:
        request = _decode(opened.body, PlanRef)
        if isinstance(request, Refusal):
            return request
        if (refused := check_plan_id(request.plan_id)) is not None:
            return refused
        state = await maestro.ratify(request.plan_id, approved=request.approve,
                                     by=opened.caller, command_id=opened.request_id,
                                     admin=_admin(opened))
        if isinstance(state, Refusal):
            return state
        return StateReply(plan_id=request.plan_id, status=state.status)

    async def replan(opened: Opened) -> StateReply | Refusal:
        request = _decode(opened.body, ReplanRequest)
        if isinstance(request, Refusal):
            return request
        if (refused := check_id(request.workflow_id, "workflow id")) is not None:
            return refused
        outcome = await maestro.replan(request.workflow_id, request.seq, caller=opened.caller,
                                       admin=_admin(opened))
        if isinstance(outcome, Refusal):
            return outcome
        if outcome is None:
            return StateReply(plan_id="", status="unchanged")
        return StateReply(plan_id=outcome.plan_id, status="revised", revision=outcome.revision)

    gate.route("plan", plan)
    gate.route("allocate", allocate)
    gate.route("ratify", ratify)
    gate.route("replan", replan, capability="maestro:plan")
    return gate
