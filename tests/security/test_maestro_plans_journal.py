"""PLANS is MAESTRO's own journal: a fold detects every message MAESTRO did not write there
(issue 10, "PLANS the same").

The attack: anyone who may publish on `maestro.plan.>` appended a PlanAllocated naming a
workflow of their choosing, and MAESTRO's fold took it as the plan's state.
"""

from __future__ import annotations

import msgspec

from envelope.local import local_trust
from envelope.statement import PLAN_DECISION, sign_statement
from streams.plan_events import PlanAllocated, PlanBatch

from .maestro_world import SOLO, WORK, maestro, now_ms, stranger


async def test_a_fold_names_every_plans_message_maestro_did_not_write(nc, js, space, tmp_path):
    trust = local_trust(tmp_path)
    m = maestro(nc, trust, space)
    assert (await m.plan(WORK, plan_id="pv")).decision == "planned"
    assert (await m.plan(SOLO, plan_id="px")).decision == "planned"
    stream = space.stream("PLANS")
    genuine_pv = await js.get_last_msg(stream, space.subject("maestro.plan.pv.proposed"))
    genuine_px = await js.get_last_msg(stream, space.subject("maestro.plan.px.proposed"))
    evil = PlanBatch(command_id="evil", events=[PlanAllocated(
        at_ms=now_ms(), plan_id="pv", workflow_id="wf-evil", orders=())], after=genuine_pv.seq)
    subject = space.subject("maestro.plan.pv.allocated")
    planted = [
        await js.publish(subject, msgspec.json.encode(evil)),  # unsigned
        await js.publish(subject, sign_statement(stranger(), PLAN_DECISION,
                                                 msgspec.json.encode(evil))),  # not MAESTRO
        await js.publish(space.subject("maestro.plan.pv.proposed"),
                         genuine_px.data),  # MAESTRO's, but about px
        await js.publish(space.subject("maestro.plan.pv.proposed"),
                         genuine_pv.data),  # MAESTRO's own, copied again
    ]
    _, state = await m.runner.load("pv", use_cache=False)
    assert state.status == "planned"
    assert state.workflow_id == ""
    assert msgspec.json.decode(state.goal)["name"] == "work"
    assert state.foreign == tuple(ack.seq for ack in planted)
    # MAESTRO goes on writing after them, and its own next message still folds.
    allocated = await m._record("pv", "allocate-pv", PlanAllocated(
        at_ms=now_ms(), plan_id="pv", workflow_id="wf-pv", orders=()))
    assert not isinstance(allocated, Exception)
    _, after = await m.runner.load("pv", use_cache=False)
    assert (after.status, after.workflow_id) == ("allocated", "wf-pv")
    assert after.foreign == state.foreign
    _, other = await m.runner.load("px", use_cache=False)
    assert other.foreign == ()
    assert m.plans.foreign >= 4
