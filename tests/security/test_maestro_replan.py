"""`maestro.replan` takes a reference to a journaled deviation, and only the plan's owner (or an
admin) may use it (issue 10, MAESTRO attack 2).

The attack: a caller holding only `maestro:plan` sent a signed `maestro.replan` whose body
carried a made-up deviation for another tenant's workflow, and MAESTRO compensated it.
"""

from __future__ import annotations

from envelope.client import Client, Reply
from envelope.local import local_trust
from maestro.gateway import maestro_gate
from streams.replies import Reason, Refusal

from .maestro_world import (
    SOLO,
    WORK,
    allocated,
    commands,
    deviation,
    dispatched,
    engine_signed,
    journal,
    maestro,
    now_ms,
    tenant,
    unsigned,
)

PLAN = "maestro:plan"  # what the replan subject stands for


async def replan(caller: Client, workflow_id: str, seq: int) -> Reply | Refusal:
    return await caller.call("maestro.replan", {"workflow_id": workflow_id, "seq": seq},
                             capability=PLAN)


async def test_a_made_up_deviation_in_the_body_compensates_nothing(nc, js, space, tmp_path):
    trust = local_trust(tmp_path)
    m = maestro(nc, trust, space)
    gate = maestro_gate(nc, m, signer=trust.maestro, trust=trust.trust_for(trust.maestro))
    victim = tenant(nc, trust, space)
    attacker = tenant(nc, trust, space, capability="maestro:plan")
    async with gate.serving(), commands(nc, space) as sent:
        planned = await victim.call("maestro.plan", {"goal": SOLO, "plan_id": "pv"})
        assert not isinstance(planned, Refusal), planned
        wf = await allocated(m, SOLO, "pv", allocate_only=True)
        await journal(js, space, wf, "dispatched",
                      engine_signed(trust.moon, dispatched(wf, "pv", SOLO, "x1")))
        made_up = {"at_ms": now_ms(), "type": "moon.deviation", "workflow_id": wf,
                   "kind": "executor_lost", "step": "s", "executor": "x1", "plan_id": "pv"}
        reply = await attacker.call("maestro.replan", {"deviation": made_up}, capability=PLAN)
        assert isinstance(reply, Refusal), reply
        assert reply.reason is Reason.MALFORMED
        # The same forgery, journaled unsigned and then referenced: named, never acted on.
        seq = await journal(js, space, wf, "deviation",
                            unsigned(deviation(wf, "pv", "s", "x1", kind="executor_lost")))
        forged = await replan(attacker, wf, seq)
        assert isinstance(forged, Refusal)
        assert forged.reason is Reason.FORGED
        assert str(seq) in forged.detail
        owner_forged = await replan(victim, wf, seq)
        assert isinstance(owner_forged, Refusal)
        assert owner_forged.reason is Reason.FORGED
        # A real deviation of the victim's workflow, referenced by someone else: not theirs.
        real = await journal(js, space, wf, "deviation",
                             engine_signed(trust.moon, deviation(wf, "pv", "s", "x1", seq=2)))
        stolen = await replan(attacker, wf, real)
        assert isinstance(stolen, Refusal)
        assert stolen.reason is Reason.NOT_OWNER
        # A reference to a message of another workflow, or to no deviation at all.
        elsewhere = await replan(victim, "wf-other", real)
        assert isinstance(elsewhere, Refusal)
        assert elsewhere.reason in {Reason.WRONG_SUBJECT, Reason.UNKNOWN_EVENT}
        odd = await replan(victim, "wf.>", real)
        assert isinstance(odd, Refusal)
        assert odd.reason is Reason.INVALID_ID
        assert sent.for_workflow(wf) == []
    _, plan = await m.runner.load("pv", use_cache=False)
    assert plan.revision == 0


async def test_the_owner_replans_from_a_journaled_deviation(nc, js, space, tmp_path):
    trust = local_trust(tmp_path)
    m = maestro(nc, trust, space)
    gate = maestro_gate(nc, m, signer=trust.maestro, trust=trust.trust_for(trust.maestro))
    owner = tenant(nc, trust, space)
    async with gate.serving(), commands(nc, space) as sent:
        planned = await owner.call("maestro.plan", {"goal": WORK, "plan_id": "pw"})
        assert not isinstance(planned, Refusal), planned
        wf = await allocated(m, WORK, "pw", allocate_only=True)
        await journal(js, space, wf, "dispatched",
                      engine_signed(trust.moon, dispatched(wf, "pw", WORK, "x1")))
        seq = await journal(js, space, wf, "deviation",
                            engine_signed(trust.moon, deviation(wf, "pw", "w", "x1")))
        reply = await replan(owner, wf, seq)
        assert not isinstance(reply, Refusal), reply
        assert [s.rsplit(".", 1)[-1] for s in await sent.wait_for(wf)] == ["replan"]
    _, plan = await m.runner.load("pw", use_cache=False)
    assert plan.revision == 1
