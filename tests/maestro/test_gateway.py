"""map.maestro.plan and ratification through the envelope gate, journaled on PLANS."""

from __future__ import annotations

import json

from envelope.client import Client
from envelope.local import local_trust
from maestro.gateway import PlanReply, StateReply, maestro_gate
from maestro.policy import Policy
from maestro.service import Maestro
from streams.replies import Reason, Refusal

from .test_replan import GOAL, offers


async def _offers():
    return offers()


async def test_a_signed_plan_request_is_planned_journaled_and_audited(nc, js, space, tmp_path):
    trust = local_trust(tmp_path)
    maestro = Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, _offers,
                      space=space)
    gate = maestro_gate(nc, maestro, signer=trust.maestro, trust=trust.trust_for(trust.maestro))
    async with gate.serving():
        client = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                        space=space)
        reply = await client.call("maestro.plan", {"goal": GOAL, "plan_id": "g1"})
        assert not isinstance(reply, Refusal), reply
        answer = reply.result(PlanReply)
        assert answer.decision == "planned"
        plan = json.loads(answer.plan)
        assert plan["status"] == "optimal"
        assert [s["id"] for s in sorted(plan["steps"], key=lambda s: s["start"])] == ["a", "b", "c"]
        again = await client.call("maestro.plan", {"goal": GOAL, "plan_id": "g1"})
        assert isinstance(again, Refusal)
        assert again.reason is Reason.ALREADY_EXISTS
    plans = await js.stream_info(space.stream("PLANS"))
    assert plans.state.messages == 1
    audits = await js.stream_info(space.stream("AUDIT"))
    assert audits.state.messages == 2


async def test_an_expensive_plan_waits_for_ratification(nc, js, space, tmp_path):
    trust = local_trust(tmp_path)
    maestro = Maestro(nc, trust.maestro, trust.maestro_grant, trust.moon.did, _offers,
                      space=space, policy=Policy(ratification_cost=1))
    gate = maestro_gate(nc, maestro, signer=trust.maestro, trust=trust.trust_for(trust.maestro))
    async with gate.serving():
        client = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                        space=space)
        reply = await client.call("maestro.plan", {"goal": GOAL, "plan_id": "g2"})
        assert reply.result(PlanReply).decision == "awaiting_ratification"
        early = await client.call("maestro.allocate", {"plan_id": "g2"})
        assert isinstance(early, Refusal)
        assert early.reason is Reason.AWAITING_RATIFICATION
        ratified = await client.call("maestro.ratify", {"plan_id": "g2", "approve": True})
        assert ratified.result(StateReply).status == "planned"
