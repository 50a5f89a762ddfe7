"""Claiming an attempt by acknowledging its order: no journaled start, no engine round trip.

What must hold: an order once taken never runs again (not even when the engine handles a
command again after a broker restart, which forgets the taken order's `Nats-Msg-Id`); the
journal still says who ran each attempt and from when, in the decision of its first report; a
claim answered too late is not trusted; a claim token proves one attempt, by an engine only.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter

from envelope.keys import KeyRing, signer_from_seed
from moon import claims as claims_module
from moon.claims import Claims, claim_key, prover, sign_claim
from moon.clock import local_ms as now_ms
from moon.outbox import order_key
from moon.worker import Result, StepContext, Worker
from streams.broker import open_connection
from streams.config import Topology, ensure_streams
from streams.moon_events import Cancel, CompleteStep, StepCompleted, StepStarted, WorkOrder
from streams.replies import Refusal

from . import fault_world as fw
from .engine_world import dispatch, engine, new_worker, orders_queued, orders_stored, step, worker

# --- the token, pure ----------------------------------------------------------------------------


def test_a_claim_token_proves_its_own_attempt_by_an_engine_and_nothing_else() -> None:
    engine_key, other = signer_from_seed(os.urandom(32)), signer_from_seed(os.urandom(32))
    key = claim_key("wf", "a", 1, compensation=False)
    token = sign_claim(engine_key, key)
    proves = prover(token, KeyRing(), [engine_key.did])
    assert proves(key)
    assert not proves(claim_key("wf", "a", 2, compensation=False))  # another attempt
    assert not proves(claim_key("wf", "a", 1, compensation=True))  # its compensation
    assert not proves(claim_key("wf2", "a", 1, compensation=False))
    # Signed by anyone but an engine (an executor forging one) proves nothing; nor does none.
    assert not prover(sign_claim(other, key), KeyRing(), [engine_key.did])(key)
    assert not prover(b"", KeyRing(), [engine_key.did])(key)


def test_an_engines_own_tokens_are_checked_without_a_verify_and_others_still_are(
        monkeypatch) -> None:
    engine_key, peer, rogue = (signer_from_seed(os.urandom(32)) for _ in range(3))
    claims = Claims(engine_key, KeyRing(), [engine_key.did, peer.did], kept=2)
    keys = [claim_key("wf", s, 1, compensation=False) for s in "abc"]
    own = [claims.token(k) for k in keys]
    assert own[0] == sign_claim(engine_key, keys[0])  # the same bytes any engine would check
    verified = []
    real = claims_module._verifies

    def counting(*args):
        verified.append(args[1])
        return real(*args)

    monkeypatch.setattr(claims_module, "_verifies", counting)
    assert claims.prover(own[2])(keys[2]) and claims.prover(own[1])(keys[1])
    assert verified == []  # its own recent tokens: a lookup
    assert claims.prover(own[0])(keys[0])  # forgotten (kept=2): verified, still good
    assert claims.prover(sign_claim(peer, keys[0]))(keys[0])  # another engine's: verified
    assert verified
    assert not claims.prover(sign_claim(rogue, keys[2]))(keys[2])  # a forgery, even for a key
    assert not claims.prover(own[1])(keys[2])  # its token for another attempt proves nothing
    assert not claims.prover(b"")(keys[2])


# --- the journal: four decisions for three steps ------------------------------------------------


async def test_a_three_step_chain_journals_each_start_with_its_completion(nc, js, space) -> None:
    async def work(ctx: StepContext) -> Result:
        return Result(output=ctx.order.step.encode())

    async with engine(nc, space) as moon, worker(nc, space, {"work": work}, executor_id="x1"):
        command = dispatch([step("a"), step("b", needs=("a",)), step("c", needs=("b",))])
        await moon.submit(command)
        final = await moon.wait_terminal(command.workflow_id, 20)
        decisions = await fw.decisions(js, space, command.workflow_id)
    assert final.status == "completed"
    # The dispatch, then one decision per step: its start (who, from when) and its completion.
    assert len(decisions) == 4
    for decision, name in zip(decisions[1:], "abc", strict=True):
        kinds = [type(event) for event in decision.events]
        assert kinds[:2] == [StepStarted, StepCompleted], kinds
        started = decision.events[0]
        assert isinstance(started, StepStarted)
        assert (started.step, started.executor) == (name, "x1")
        assert final.steps[name].started_at is not None
        assert final.steps[name].scheduled_at <= final.steps[name].started_at  # type: ignore[operator]


# --- an order taken is never sent again ---------------------------------------------------------


async def test_a_command_handled_again_after_a_broker_restart_does_not_resend_a_taken_order(
    broker, space
) -> None:
    """b's order is taken (running); the broker restarts, forgetting its `Nats-Msg-Id`; a's
    completion comes back as a retry. Sending b's order again would be stored anew and run
    again: the engine must not send it."""
    client = await open_connection(broker.url, name="claims-restart")
    js = client.jetstream()
    await ensure_streams(js, Topology(space=space))
    runs: Counter[str] = Counter()
    b_running, release = asyncio.Event(), asyncio.Event()

    async def work(ctx: StepContext) -> Result:
        runs[ctx.key] += 1
        if ctx.order.step == "b":
            b_running.set()
            await release.wait()
        return Result(output=ctx.order.step.encode())

    try:
        # Not eager: b's order goes through WORK, whose deduplication the restart forgets.
        async with engine(client, space) as moon, worker(client, space, {"work": work},
                                                         capacity=4, eager=False) as w:
            command = dispatch([step("a"), step("b", needs=("a",))])
            wf = command.workflow_id
            await moon.submit(command)
            await asyncio.wait_for(b_running.wait(), 10)
            work_stream = space.stream("WORK")
            before = orders_stored(await js.stream_info(work_stream), moon)
            await asyncio.to_thread(broker.kill)
            await asyncio.to_thread(broker.start)
            again = CompleteStep(command_id=f"done/{wf}/a/1", workflow_id=wf, at_ms=0, step="a",
                                 attempt=1, result=b"a")
            answer = await _until_answered(w, again)
            assert answer.ok, answer
            after = orders_stored(await js.stream_info(work_stream), moon)
            release.set()
            final = await fw.wait_all_terminal(js, space, [wf], timeout_s=30)
        assert final[wf].status == "completed"
        assert after == before == 2  # a's order and b's, nothing sent again
        assert runs == Counter({f"{wf}/a/1": 1, f"{wf}/b/1": 1})
    finally:
        await client.close()


async def _until_answered(w: Worker, report: CompleteStep):  # type: ignore[no-untyped-def]
    for _ in range(100):  # the engine reconnects to the restarted broker
        try:
            return await w.request(report, retry=True)
        except Exception:  # no responders while it reconnects
            await asyncio.sleep(0.1)
    raise AssertionError("the engine never answered")


# --- a claim answered too late -------------------------------------------------------------------


class _Acked:
    """A delivered order whose acknowledgement the broker answers: how long after the pull is
    the test's choice."""

    def __init__(self) -> None:
        self.acked = 0

    async def ack_sync(self, **_: object) -> None:
        self.acked += 1


async def test_a_claim_answered_later_than_the_ack_wait_allows_is_not_run(nc, js, space) -> None:
    w = await new_worker(nc, space, {"work": _never}, ack_wait_s=5.0)
    order = WorkOrder(workflow_id="wf", step="a", attempt=1, capability="work", executor=None,
                      deadline_ms=0, timeout_ms=1000, idempotency_key="wf/a/1")
    msg = _Acked()
    # Answered within the ack wait of its pull: nobody else can have been given the order.
    assert await w._claim(order, msg, time.monotonic(), 5.0)  # type: ignore[arg-type]
    # The pull was asked 4.5 s ago: the broker may have redelivered it by the time we acked.
    assert not await w._claim(order, msg, time.monotonic() - 4.5, 5.0)  # type: ignore[arg-type]
    # Timed against the ack wait the broker applies (the consumer's creator set it): 1 s here.
    assert not await w._claim(order, msg, time.monotonic() - 0.6, 1.0)  # type: ignore[arg-type]
    assert msg.acked == 3  # acknowledged either way: a late claim's order is not run by anyone


async def _never(ctx: StepContext) -> Result:
    raise AssertionError("not run")


# --- a cancel withdraws what is still queued ---------------------------------------------------


async def test_a_cancel_withdraws_the_orders_still_queued(nc, js, space) -> None:
    """The engine no longer refuses a start, so a cancelled workflow's queued order would run
    when an executor came for it: the cancel deletes the orders its engine sent."""
    ran: list[str] = []

    async def work(ctx: StepContext) -> Result:
        ran.append(ctx.key)
        return Result(output=b"ran")

    async with engine(nc, space) as moon:
        command = dispatch([step("a"), step("b")])  # no executor yet: both orders wait
        await moon.submit(command)
        work_stream = space.stream("WORK")
        assert await orders_queued(js, space) == 2
        cancel = Cancel(command_id="cancel-it", workflow_id=command.workflow_id, at_ms=now_ms(),
                        reason="changed my mind")
        cancelled = await moon.submit(cancel)
        assert not isinstance(cancelled, Refusal), cancelled
        assert await orders_queued(js, space) == 0
        async with worker(nc, space, {"work": work}) as w:  # an executor comes: nothing to take
            consumer = await js.consumer_info(work_stream, space.consumer("any-work"))
            assert (consumer.num_pending, consumer.num_ack_pending) == (0, 0)
            assert w.executed == 0
    assert ran == []


async def test_a_cancel_withdraws_the_queued_orders_another_engine_sent(nc, js, space) -> None:
    """Engines share the work: the one that decides the cancel need not be the one that sent
    the orders (or it restarted since). It finds them by their keys in WORK's deduplication,
    and holds the keys, so an order still on its way from the other engine is dropped."""
    ran: list[str] = []

    async def work(ctx: StepContext) -> Result:
        ran.append(ctx.key)
        return Result(output=b"ran")

    async with engine(nc, space) as sender, engine(nc, space) as canceller:
        command = dispatch([step("a"), step("b")])  # no executor yet: both orders wait
        await sender.submit(command)
        work_stream = space.stream("WORK")
        assert await orders_queued(js, space) == 2
        cancelled = await canceller.submit(Cancel(
            command_id="cancel-it", workflow_id=command.workflow_id, at_ms=now_ms(),
            reason="changed my mind"))
        assert not isinstance(cancelled, Refusal), cancelled
        assert cancelled.state.status == "cancelled"
        assert await orders_queued(js, space) == 0
        late = await js.publish(space.subject("work.any.work"), b"a late copy",
                                headers={"Nats-Msg-Id": order_key(command.workflow_id, "a", 1,
                                                                   compensation=False)})
        assert late.duplicate
        async with worker(nc, space, {"work": work}) as w:  # an executor comes: nothing to take
            consumer = await js.consumer_info(work_stream, space.consumer("any-work"))
            assert (consumer.num_pending, consumer.num_ack_pending) == (0, 0)
            assert w.executed == 0
    assert ran == []


# --- pulls: one serves several orders while they keep coming ------------------------------------


async def test_a_worker_asks_for_several_orders_in_one_pull_while_they_keep_coming(
        nc, js, space) -> None:
    pulls = 0
    publish = nc.publish

    async def counted(subject, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal pulls
        pulls += subject.startswith("$JS.API.CONSUMER.MSG.NEXT.")
        return await publish(subject, *args, **kwargs)

    async def work(ctx: StepContext) -> Result:
        return Result(output=b"ok")

    async with engine(nc, space) as moon:
        commands = [dispatch([step("a")]) for _ in range(60)]
        await asyncio.gather(*(moon.submit(c) for c in commands))  # queued before any pull
        nc.publish = counted  # type: ignore[method-assign]
        started = asyncio.get_running_loop().time()
        try:
            async with worker(nc, space, {"work": work}, executor_id="x1", capacity=64) as w:
                finals = await asyncio.gather(*(moon.wait_terminal(c.workflow_id, 30)
                                                for c in commands))
                elapsed = asyncio.get_running_loop().time() - started
                ran = w.executed
        finally:
            nc.publish = publish  # type: ignore[method-assign]
    assert [f.status for f in finals] == ["completed"] * 60
    assert ran == 60
    # One pull per order before; now a pull doubles (up to 32: 64 slots, 2 pullers) while each
    # fills and free slots allow. Idle re-pulls (one a second per puller) grow with how long a
    # busy machine takes over the 60, so they are allowed for: one pull per order would be 60.
    assert pulls <= 12 + 2 * math.ceil(elapsed), (pulls, elapsed)
