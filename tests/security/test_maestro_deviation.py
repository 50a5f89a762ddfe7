"""MAESTRO acts only on deviations the engine signed (issue 10, MAESTRO attack 1).

The attack: anyone who may publish on `moon.wf.>` appended a Deviation that never happened
(x1 lost) and MAESTRO excluded x1 and compensated the workflow. Now a journal message that is
not an engine-signed Decision with a Deviation for the subject's own workflow is logged,
counted and acked, never acted on, and the replanner goes on serving.
"""

from __future__ import annotations

import asyncio

from envelope.local import local_trust
from moon.service import running

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
    stranger,
    unsigned,
)


async def settled(js, space):
    """The replanner's consumer once its last ack has reached the server (acks are sent after
    the command they follow, so the test can see the command first): polled, with a limit."""
    loop = asyncio.get_running_loop()
    until = loop.time() + 10
    while True:
        info = await js.consumer_info(space.stream("DEVIATIONS"),
                                      space.consumer("maestro-replanner"))
        if info.num_ack_pending == 0 or loop.time() > until:
            return info
        await asyncio.sleep(0.05)


async def test_forged_deviations_are_never_acted_on_and_a_signed_one_still_is(
    nc, js, space, tmp_path
):
    trust = local_trust(tmp_path)
    m = maestro(nc, trust, space)
    victim = await allocated(m, SOLO, "pv")  # x1 alone runs it: excluded, nothing fits
    probe = await allocated(m, WORK, "pw")  # x1 or x2: a real deviation moves it to x2
    await journal(js, space, victim, "dispatched",
                  engine_signed(trust.moon, dispatched(victim, "pv", SOLO, "x1")))
    await journal(js, space, probe, "dispatched",
                  engine_signed(trust.moon, dispatched(probe, "pw", WORK, "x1")))
    async with commands(nc, space) as sent, running(
            lambda ready: m.run_replanner(ready=ready), m.stop):
        # 1. unsigned; 2. signed by a key that is not the engine's; 3. signed by MAESTRO (a
        # planner, not an engine); 4. the engine's, but for another workflow than its subject;
        # 5. garbage.
        forged = deviation(victim, "pv", "s", "x1", kind="executor_lost", seq=1)
        await journal(js, space, victim, "deviation", unsigned(forged))
        await journal(js, space, victim, "deviation", engine_signed(stranger(), forged))
        await journal(js, space, victim, "deviation", engine_signed(trust.maestro, forged))
        await journal(js, space, probe, "deviation", engine_signed(trust.moon, forged))
        await journal(js, space, victim, "deviation", b"\xff not json")
        # Then a real one, on another workflow: once it is acted on, the forgeries before it
        # on the same consumer have been handled.
        await journal(js, space, probe, "deviation",
                      engine_signed(trust.moon, deviation(probe, "pw", "w", "x1", seq=2)))
        moved = await sent.wait_for(probe)
        assert sent.for_workflow(victim) == [], "a forged deviation made MAESTRO act"
        info = await settled(js, space)
    assert [s.rsplit(".", 1)[-1] for s in moved] == ["replan"]
    _, plan = await m.runner.load("pv", use_cache=False)
    assert plan.revision == 0
    assert plan.status == "allocated"
    assert m.forged_deviations >= 5
    assert info.num_ack_pending == 0  # acked, never looping
    assert info.num_redelivered == 0


async def test_an_engine_signed_deviation_naming_another_workflows_plan_is_ignored(
    nc, js, space, tmp_path
):
    """A workflow dispatched straight to MOON may name any plan id: its (genuine) deviation must
    not revise a plan that runs another workflow."""
    trust = local_trust(tmp_path)
    m = maestro(nc, trust, space)
    victim = await allocated(m, SOLO, "pv")
    probe = await allocated(m, WORK, "pw")
    rogue = "wf-rogue"
    await journal(js, space, victim, "dispatched",
                  engine_signed(trust.moon, dispatched(victim, "pv", SOLO, "x1")))
    await journal(js, space, probe, "dispatched",
                  engine_signed(trust.moon, dispatched(probe, "pw", WORK, "x1")))
    await journal(js, space, rogue, "dispatched",
                  engine_signed(trust.moon, dispatched(rogue, "pv", SOLO, "x1")))
    async with commands(nc, space) as sent, running(
            lambda ready: m.run_replanner(ready=ready), m.stop):
        await journal(js, space, rogue, "deviation",
                      engine_signed(trust.moon, deviation(rogue, "pv", "s", "x1", seq=1)))
        await journal(js, space, probe, "deviation",
                      engine_signed(trust.moon, deviation(probe, "pw", "w", "x1", seq=2)))
        await sent.wait_for(probe)
        assert sent.for_workflow(rogue) == []
        assert sent.for_workflow(victim) == []
    _, plan = await m.runner.load("pv", use_cache=False)
    assert plan.revision == 0
