"""A plan id belongs to the caller that created it, and is one subject token (issue 10, MAESTRO
attack 4).

The attack: a plan id with a dot, `pv.evil`, journaled on `maestro.plan.pv.evil.<kind>`,
which the victim's `pv` reads (`maestro.plan.pv.>`): the attacker's plan became the victim's.
"""

from __future__ import annotations

import msgspec

from envelope.local import local_trust
from maestro.gateway import PlanReply, maestro_gate
from maestro.goal import Goal
from streams.replies import Reason, Refusal

from .maestro_world import SOLO, WORK, maestro, tenant


async def test_a_plan_id_is_one_token_and_belongs_to_its_creator(nc, js, space, tmp_path):
    trust = local_trust(tmp_path)
    m = maestro(nc, trust, space)
    gate = maestro_gate(nc, m, signer=trust.maestro, trust=trust.trust_for(trust.maestro))
    victim = tenant(nc, trust, space)
    attacker = tenant(nc, trust, space)
    async with gate.serving():
        for bad in ("pv.evil", "pv.*", "pv.>", "pv evil", "x" * 65, ""):
            evil = await attacker.call("maestro.plan", {"goal": WORK, "plan_id": bad})
            assert isinstance(evil, Refusal), bad
            assert evil.reason is Reason.INVALID_ID, (bad, evil)
        mine = await victim.call("maestro.plan", {"goal": SOLO, "plan_id": "pv"})
        assert not isinstance(mine, Refusal), mine
        _, state = await m.runner.load("pv", use_cache=False)
        assert msgspec.json.decode(state.goal, type=Goal).name == "solo"
        assert state.owner == victim.key.did
        # Another caller may neither plan over it, nor allocate, ratify or replan it.
        for method, body in (("maestro.plan", {"goal": WORK, "plan_id": "pv"}),
                             ("maestro.allocate", {"plan_id": "pv"}),
                             ("maestro.ratify", {"plan_id": "pv", "approve": False})):
            refused = await attacker.call(method, body)
            assert isinstance(refused, Refusal), method
            assert refused.reason is Reason.NOT_OWNER, (method, refused)
        _, after = await m.runner.load("pv", use_cache=False)
        assert after.status == "planned"
        assert after.owner == victim.key.did


async def test_generated_plan_ids_cannot_be_taken_first(nc, js, space, tmp_path):
    """A plan id MAESTRO makes up is not derived from anything the caller sent alone."""
    trust = local_trust(tmp_path)
    m = maestro(nc, trust, space)
    gate = maestro_gate(nc, m, signer=trust.maestro, trust=trust.trust_for(trust.maestro))
    victim = tenant(nc, trust, space)
    attacker = tenant(nc, trust, space)
    async with gate.serving():
        # The old rule was p-<request id>: the attacker takes the victim's next one first.
        taken = await attacker.call("maestro.plan", {"goal": WORK, "plan_id": "p-r1"})
        assert not isinstance(taken, Refusal), taken
        reply = await victim.call("maestro.plan", {"goal": SOLO}, request_id="r1")
        assert not isinstance(reply, Refusal), reply
        plan_id = reply.result(PlanReply).plan_id
        assert plan_id != "p-r1"
        _, state = await m.runner.load(plan_id, use_cache=False)
        assert state.owner == victim.key.did
        assert msgspec.json.decode(state.goal, type=Goal).name == "solo"
