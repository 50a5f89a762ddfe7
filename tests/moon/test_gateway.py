"""moon.dispatch through the envelope gate: signed in, one workflow, one audit record."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import msgspec

from envelope.client import Client
from envelope.gate import _final_id
from envelope.late_audit import LateAudit
from envelope.local import local_trust
from envelope.seal import open_response
from moon.clock import local_ms as now_ms
from moon.gateway import DispatchReply, ReplayReply, moon_gate
from moon.worker import Result
from streams.audit import AuditRecord
from streams.moon_events import Cancel
from streams.replies import Reason, Refusal
from tests.envelope.gate_world import audit_records

from .engine_world import engine, new_engine, orders_stored, step, worker


def body(steps, **extra) -> dict:
    return {"steps": list(steps), **extra}


async def _ok(ctx):
    return Result(output=b"ok")


@contextlib.asynccontextmanager
async def gated(nc, space, tmp_path):  # type: ignore[no-untyped-def]
    """An engine, a worker for the `work` capability, MOON's gate in front, and the operator's
    client."""
    trust = local_trust(tmp_path)
    async with engine(nc, space) as eng, worker(nc, space, {"work": _ok}):
        gate = moon_gate(nc, eng, signer=trust.moon, trust=trust.trust_for(trust.moon))
        async with gate.serving():
            yield eng, Client(nc, trust.operator, trust.services,
                              grant=(trust.operator_grant,), space=space)


async def test_a_signed_dispatch_runs_once_and_replays(nc, js, space, tmp_path):
    async with gated(nc, space, tmp_path) as (eng, client):
        request_id, _, sealed = client.seal("moon.dispatch",
                                            body([step("a"), step("b", needs=("a",))]))
        reply = await client.send("moon.dispatch", request_id, "", sealed)
        again = await client.send("moon.dispatch", request_id, "", sealed)
        assert not isinstance(reply, Refusal), reply
        first = reply.result(DispatchReply)
        assert again.result(DispatchReply) == first
        final = await eng.wait_terminal(first.workflow_id, 30)
        assert final.status == "completed"
        replayed = await client.call("moon.replay",
                                     {"workflow_id": first.workflow_id, "verify": True},
                                     capability="moon:read")
        assert replayed.result(ReplayReply).mismatches == 0
        assert replayed.result(ReplayReply).status == "completed"
        bad = await client.call("moon.dispatch", body([step("a", needs=("a",))]))
        assert isinstance(bad, Refusal)
        assert bad.reason is Reason.CYCLE
    audits = await js.stream_info(space.stream("AUDIT"))
    assert audits.state.messages >= 3


async def test_a_dispatch_sent_again_byte_for_byte_gets_its_first_answer_without_a_nonce(
    nc, js, space, tmp_path
):
    """MOON's routes keep each request id's first answer and decide by the request id, so the
    gate stores no nonce for them (one write and one stage less): the same bytes again (a
    retry, or someone replaying them) get the first answer and start nothing. A route that
    is not idempotent still stores its nonce first."""
    async with gated(nc, space, tmp_path) as (eng, client):
        request_id, _, sealed = client.seal("moon.dispatch", body([step("a")]))
        first = await client.send("moon.dispatch", request_id, "", sealed)
        assert not isinstance(first, Refusal), first
        wf = first.result(DispatchReply).workflow_id
        await eng.wait_terminal(wf, 30)
        nonces = await js.stream_info("KV_" + space.bucket("envelope_nonces"))
        assert nonces.state.messages == 0
        again = await client.send("moon.dispatch", request_id, "", sealed)
        assert again.result(DispatchReply) == first.result(DispatchReply)
        replay = await client.call("moon.replay", {"workflow_id": wf},
                                   capability="moon:read")
        assert not isinstance(replay, Refusal), replay
        nonces = await js.stream_info("KV_" + space.bucket("envelope_nonces"))
        assert nonces.state.messages == 1  # the replay route's
    journal = await js.stream_info(space.stream("MOON"))
    assert journal.state.messages == 2  # one dispatch, one completion: nothing started twice


async def test_a_dispatch_keeps_its_first_answer_in_its_audit_record(nc, js, space, tmp_path):
    """The answer rides in the request's audit record (one write for both, no outcome-store
    entry): a retry of the request id, sealed again after the workflow moved on, gets that
    first answer, not today's state. Another caller's request under the same id is its own
    request: answered for itself (here: the workflow is not its own), never handed the first
    caller's answer, and audited under its own name."""
    trust = local_trust(tmp_path)
    async with gated(nc, space, tmp_path) as (eng, client):
        request_id, _, sealed = client.seal("moon.dispatch", body([step("a")]))
        first = await client.send("moon.dispatch", request_id, "", sealed)
        assert not isinstance(first, Refusal), first
        answer = first.result(DispatchReply)
        assert (await eng.wait_terminal(answer.workflow_id, 30)).status == "completed"
        outcomes = await js.stream_info("KV_" + space.bucket("envelope_outcomes"))
        assert outcomes.state.messages == 0
        again = await client.call("moon.dispatch", body([step("a")]), request_id=request_id)
        assert not isinstance(again, Refusal), again
        assert again.result(DispatchReply) == answer and answer.status != "completed"
        other = Client(nc, trust.maestro, trust.services, grant=(trust.maestro_grant,),
                       space=space)
        theirs = await other.call("moon.dispatch", body([step("a")]), request_id=request_id)
        assert isinstance(theirs, Refusal) and theirs.reason is Reason.NOT_OWNER, theirs
    records = await audit_records(js, space)
    mine = [r for r in records if r.id == request_id and r.caller == trust.operator.did]
    assert len(mine) == 1 and mine[0].answer and mine[0].outcome == "accepted"
    assert [(r.id, r.reason) for r in records if r.caller == trust.maestro.did] == [
        (request_id, Reason.NOT_OWNER)]


async def test_a_request_id_another_record_holds_still_gets_its_own_record(
    nc, js, space, tmp_path
):
    """Records are deduplicated by id, and a request id is the caller's to choose: one that
    equals another record's (here the id of a junk refusal, its bytes' hash) must neither
    drop this request's record (an accepted request with no audit) nor be answered from the
    other record, on either kind of route."""
    async with gated(nc, space, tmp_path) as (eng, client):
        junk = b"not an envelope"
        refused = await nc.request(space.subject("map.moon.dispatch"), junk, timeout=5)
        assert b"malformed" in refused.data
        taken = hashlib.sha256(junk).hexdigest()
        reply = await client.call("moon.dispatch", body([step("a")], workflow_id="w-taken"),
                                 request_id=taken)
        assert not isinstance(reply, Refusal), reply
        await eng.wait_terminal(reply.result(DispatchReply).workflow_id, 30)
        # and on a route that claims its ids first (moon.replay is not idempotent)
        junk = b"not an envelope either"
        await nc.request(space.subject("map.moon.replay"), junk, timeout=5)
        claimed = hashlib.sha256(junk).hexdigest()
        read = await client.call("moon.replay", {"workflow_id": "w-taken"},
                                 capability="moon:read", request_id=claimed)
        assert not isinstance(read, Refusal), read
        # the same caller's id on another method: a request of its own, which ran
        again = await client.call("moon.replay", {"workflow_id": "w-taken"},
                                  capability="moon:read", request_id=taken)
        assert not isinstance(again, Refusal), again
    records = await audit_records(js, space)
    assert sorted((r.method, r.outcome) for r in records if r.id == taken) == [
        ("dispatch", "accepted"), ("dispatch", "refused"), ("replay", "accepted")]
    assert sorted((r.caller_verified, r.outcome) for r in records if r.id == claimed) == [
        (False, "refused"), (True, "accepted")]


async def test_an_answer_kept_under_this_callers_id_by_someone_else_is_never_handed_out(
    nc, js, space, tmp_path
):
    """Defence in depth: a record found under this caller's answer id that names another
    caller (only a forged or colliding one could) is never returned. A first handling answers
    from its own journal append and keeps its record beside the planted one (the request ran:
    its record must not be dropped); a retry, which finds the planted record as the id's first
    answer, is refused as a replay."""
    trust = local_trust(tmp_path)
    async with gated(nc, space, tmp_path) as (_, client):
        request_id, _, sealed = client.seal("moon.dispatch", body([step("a")]))
        planted = AuditRecord(
            id=request_id, service="moon", method="dispatch", outcome="accepted",
            request_hash=b"", caller="did:key:someone-else", caller_verified=True,
            capability="moon:dispatch", traceparent="", at=now_ms(), answer=b"not yours")
        await js.publish(space.subject("audit.moon.dispatch.accepted"),
                         msgspec.json.encode(planted),
                         headers={"Nats-Msg-Id": _final_id(msgspec.structs.replace(
                             planted, caller=trust.operator.did))})
        first = await client.send("moon.dispatch", request_id, "", sealed)
        assert not isinstance(first, Refusal), first
        assert first.result(DispatchReply).workflow_id == f"wf-{request_id}"
        again = await client.call("moon.dispatch", body([step("a")]), request_id=request_id)
    assert isinstance(again, Refusal) and again.reason is Reason.REPLAYED, again
    assert "another caller" in again.detail
    mine = [r for r in await audit_records(js, space)
            if r.id == request_id and r.caller == trust.operator.did]
    assert [r.outcome for r in mine] == ["accepted"], mine  # the retry's is an attempt's
    assert mine[0].answer and mine[0].answer != planted.answer


async def test_an_unsigned_dispatch_is_refused_and_audited(nc, js, space, tmp_path):
    trust = local_trust(tmp_path)
    eng = await new_engine(nc, space)
    gate = moon_gate(nc, eng, signer=trust.moon, trust=trust.trust_for(trust.moon))
    async with gate.serving():
        answer = await nc.request(space.subject("map.moon.dispatch"), b"not an envelope",
                                  timeout=5)
        assert b"malformed" in answer.data
        await asyncio.sleep(0)
    info = await js.stream_info(space.stream("AUDIT"))
    assert info.state.messages == 1


async def test_a_retried_dispatch_whose_first_handling_died_after_the_append_still_runs(
    nc, js, space, tmp_path
):
    """`moon serve` journals the dispatch and its orders are lost; the caller sends the same
    request to the restarted service: the workflow must not be left with nothing to move it.
    The first answer already says accepted (the journal append made that true; the orders
    finish after the answer, envelope/later.py). The retry gets the same answer, decides nothing
    new and sends no order (an order sent twice could run twice: moon/engine.py `_send_again`);
    the wake-up is armed, and the step's timeout schedules the next attempt, which runs."""
    trust = local_trust(tmp_path)

    async def work(ctx):
        return Result(output=b"ok")

    async def killed(*_: object, **__: object) -> None:
        raise ConnectionError("kill -9 between the append and the effects")

    client = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                    space=space)
    request_id, _, sealed = client.seal("moon.dispatch", body([step("a", timeout_ms=3000)]))
    dying = await new_engine(nc, space)
    dying.effects.send_orders = killed  # type: ignore[method-assign]
    async with moon_gate(nc, dying, signer=trust.moon,
                         trust=trust.trust_for(trust.moon)).serving():
        first = await client.send("moon.dispatch", request_id, "", sealed)
    assert not isinstance(first, Refusal), first
    async with engine(nc, space) as restarted, worker(nc, space, {"work": work}):
        async with moon_gate(nc, restarted, signer=trust.moon,
                             trust=trust.trust_for(trust.moon)).serving():
            again = await client.send("moon.dispatch", request_id, "", sealed)
        assert not isinstance(again, Refusal), again
        assert again.result(DispatchReply) == first.result(DispatchReply)
        final = await restarted.wait_terminal(again.result(DispatchReply).workflow_id, 30)
    assert final.status == "completed"
    assert final.steps["a"].attempt == 2  # the first attempt's order was never sent


async def test_a_dispatch_is_answered_before_its_orders_are_stored_and_holds_its_workflow_till_then(
    nc, js, space, tmp_path
):
    """Through the gate, a decision's effects finish beside and after the answer and its audit
    record (envelope/later.py): the answer does not wait for them (the journal append made it
    true), but the workflow's next command is decided only after them, as when the engine
    awaited them itself."""
    trust = local_trust(tmp_path)
    entered, release = asyncio.Event(), asyncio.Event()
    eng = await new_engine(nc, space)
    real = eng.effects.send_orders

    async def held_orders(orders):  # type: ignore[no-untyped-def]
        orders = list(orders)
        if orders:  # the dispatch's; the cancel sends none
            entered.set()
            await release.wait()
        return await real(orders)

    eng.effects.send_orders = held_orders  # type: ignore[method-assign]
    client = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                    space=space)
    async with moon_gate(nc, eng, signer=trust.moon,
                         trust=trust.trust_for(trust.moon)).serving():
        answer = asyncio.ensure_future(client.call("moon.dispatch", body([step("a")],
                                                                        workflow_id="w-held")))
        await asyncio.wait_for(entered.wait(), 10)
        cancel = asyncio.ensure_future(eng.submit(Cancel(
            command_id="cancel-w-held", workflow_id="w-held", at_ms=now_ms(), reason="test")))
        await asyncio.wait_for(asyncio.shield(answer), 10)  # answered, orders still held
        done, _ = await asyncio.wait({cancel}, timeout=0.5)
        assert not done  # the workflow's next command waits for its orders
        release.set()
        reply = await asyncio.wait_for(answer, 10)
        cancelled = await asyncio.wait_for(cancel, 10)
    assert reply.result(DispatchReply).workflow_id == "w-held"
    assert eng.stats.handed_over == 1  # the dispatch's effects went beside the answer
    assert not isinstance(cancelled, Refusal) and cancelled.state.status == "cancelled"
    orders = await js.stream_info(space.stream("WORK"))
    assert orders_stored(orders, eng) == 1  # the order was stored before the cancel was decided


async def test_a_dispatch_is_answered_before_its_audit_record_and_a_lost_record_is_written_again(
    nc, js, space, tmp_path
):
    """The dispatch's journal append carries its request's audit evidence, so the answer waits
    for that one write and the record follows it (envelope/later.py). When the record never
    reaches AUDIT (here AUDIT refuses every write of the first gate, as when its process dies
    after the answer), the first engine's mark stays below the dispatch, even after its
    workflow ended; the engine that takes that mark over writes the record from the journal:
    the same record and the same answer, byte for byte."""
    trust = local_trust(tmp_path)
    client = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                    space=space)
    request_id, _, sealed = client.seal("moon.dispatch", body([step("a")]))

    async def unreachable(*_: object, **__: object) -> None:
        raise ConnectionError("AUDIT is out of reach")

    async with engine(nc, space) as first, worker(nc, space, {"work": _ok}):
        gate = moon_gate(nc, first, signer=trust.moon, trust=trust.trust_for(trust.moon))
        gate.audit.first = unreachable  # type: ignore[method-assign]
        gate.audit.append = unreachable  # type: ignore[method-assign]
        async with gate.serving():
            answer, _ = await asyncio.wait_for(gate.handle("dispatch", sealed), 10)
            assert (await first.wait_terminal(f"wf-{request_id}", 30)).status == "completed"
            await first.projector.put_mark(first.clock())  # after the end: still held below
    opened = open_response(answer, issuer=trust.moon.did, keys=client.keys,
                           caller=trust.operator.did, request_id=request_id, request=sealed)
    assert not isinstance(opened, Refusal) and opened.outcome == "accepted", opened
    assert not [r for r in await audit_records(js, space) if r.id == request_id]
    records = await nc.subscribe(space.subject("audit.moon.dispatch.accepted"))
    async with engine(nc, space, stale_ms=1) as second:
        moon_gate(nc, second, signer=trust.moon, trust=trust.trust_for(trust.moon))
        msg = await records.next_msg(timeout=15)
    record = msgspec.json.decode(msg.data, type=AuditRecord)
    assert (record.id, record.caller, record.capability, record.outcome) == (
        request_id, trust.operator.did, "moon:dispatch", "accepted")
    assert record.answer == answer
    assert record.request_hash == hashlib.sha256(sealed).digest()


async def test_while_audit_takes_no_record_the_records_held_are_bounded(nc, js, space, tmp_path):
    """A record written after its answer waits in the gate's memory while AUDIT takes none:
    past the backlog, a dispatch waits for its record before its answer again, and so is
    refused (retryably) while AUDIT is away, as every request was before."""
    trust = local_trust(tmp_path)

    async def unreachable(*_: object, **__: object) -> None:
        raise ConnectionError("AUDIT is out of reach")

    async with engine(nc, space) as eng, worker(nc, space, {"work": _ok}):
        gate = moon_gate(nc, eng, signer=trust.moon, trust=trust.trust_for(trust.moon))
        gate._late = LateAudit(gate.audit, gate._log, backlog=1)
        gate.audit.first = unreachable  # type: ignore[method-assign]
        gate.audit.append = unreachable  # type: ignore[method-assign]
        client = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                        space=space)
        async with gate.serving():
            first = await client.call("moon.dispatch", body([step("a")]))
            second = await client.call("moon.dispatch", body([step("a")]))
    assert not isinstance(first, Refusal), first  # its record waits in the backlog
    assert isinstance(second, Refusal) and second.reason is Reason.UNAVAILABLE, second
