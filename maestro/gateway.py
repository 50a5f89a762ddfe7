"""MAESTRO's methods behind the envelope gate: plan, allocate, replan, ratify."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from nats.aio.client import Client as Nats

from envelope.gate import Gate
from envelope.keys import Signer
from envelope.seal import Opened, Trust
from maestro.gantt import to_json
from maestro.goal import Goal
from maestro.service import Allocated, Maestro
from streams.moon_events import Deviation
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
    deviation: Deviation


class StateReply(msgspec.Struct, frozen=True):
    plan_id: str
    status: str
    revision: int = 0


def _decode(body: bytes, type_: type[T]) -> T | Refusal:
    try:
        return msgspec.msgpack.decode(body, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
        return Refusal(Reason.MALFORMED, str(error))


def maestro_gate(nc: Nats, maestro: Maestro, *, signer: Signer, trust: Trust) -> Gate:
    # Few at once: each plan is a CP-SAT solve with a wall-clock limit, and solves that share
    # the cores find worse plans in that time.
    gate = Gate(nc, service="maestro", signer=signer, trust=trust, space=maestro.space,
                concurrency=4)

    async def plan(opened: Opened) -> PlanReply | Refusal:
        request = _decode(opened.body, PlanRequest)
        if isinstance(request, Refusal):
            return request
        plan_id = request.plan_id or f"p-{opened.request_id}"
        outcome = await maestro.plan(request.goal, plan_id=plan_id, command_id=opened.request_id)
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
        return await maestro.allocate(request.plan_id, command_id=opened.request_id)

    async def ratify(opened: Opened) -> StateReply | Refusal:
        request = _decode(opened.body, PlanRef)
        if isinstance(request, Refusal):
            return request
        state = await maestro.ratify(request.plan_id, approved=request.approve,
                                     by=opened.caller, command_id=opened.request_id)
        if isinstance(state, Refusal):
            return state
        return StateReply(plan_id=request.plan_id, status=state.status)

    async def replan(opened: Opened) -> StateReply | Refusal:
        request = _decode(opened.body, ReplanRequest)
        if isinstance(request, Refusal):
            return request
        outcome = await maestro.on_deviation(request.deviation)
        if isinstance(outcome, Refusal):
            return outcome
        plan_id = request.deviation.plan_id or ""
        if outcome is None:
            return StateReply(plan_id=plan_id, status="unchanged")
        return StateReply(plan_id=plan_id, status="revised", revision=outcome.revision)

    gate.route("plan", plan)
    gate.route("allocate", allocate)
    gate.route("ratify", ratify)
    gate.route("replan", replan, capability="maestro:plan")
    return gate
