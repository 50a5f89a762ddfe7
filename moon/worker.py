"""The executor SDK: take binding work orders, run a handler, report back.

A handler gets a `StepContext`: its idempotency key (`workflow/step/attempt`), the results of the
steps it depends on, the last checkpoint of an earlier attempt, and `checkpoint()`/`heartbeat()`.
Reports are statements signed by this executor's key (moon/reports.py), sent to the engine as
requests and answered once the decision they cause is journaled; the engine accepts them only
from the executor the attempt is bound to, and ignores reports for stale attempts.

A completion offers to run what it schedules next (eager dispatch, moon/handoff.py): such an
order comes in the engine's answer, to this process alone, and runs in the same slot with no
WORK message and no claim.
An attempt runs at most once, a step at least once. The worker claims an order by acknowledging
its WORK message before running it: WORK is a work-queue stream, so the broker removes the
message, durably, before it answers the acknowledgement, and nobody can take it again (moon/
claims.py). The claim costs no write of its own and no round trip to the engine; the engine
learns who took a pool order from its first report, which carries the order's claim token.
A claim counts only if its answer came back within the consumer's ack wait of the pull that
fetched it (a puller has one pull out at a time on its inbox, so a message never answers a
later pull): only then can the broker not have handed the order to anyone else meanwhile.
Why not run first and acknowledge after: a kill between the side effect and the report would
run it twice. What this costs: an attempt whose executor dies is not run again under the same
key; the engine's step timeout or heartbeat timeout settles it and schedules the next attempt,
which gets the last checkpoint. Give long steps a heartbeat timeout so that takes seconds, not
`timeout_ms`.
Three kinds of executor share this loop: an in-process Python handler, a subprocess command and
an HTTP call (see `subprocess_handler` and `http_handler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from envelope.keys import KeyRing, Signer
from envelope.statement import ORDER, open_statement
from moon import tracing
from moon.clock import BrokerClock
from moon.effects import ORDERS
from moon.reports import RETRY_HEADER, Report, ReportReply, report_subject, seal_report
from streams import metrics, subjects
from streams.codec import Undecodable
from streams.moon_events import (
    CheckpointStep,
    CompleteStep,
    FailStep,
    Heartbeat,
    Usage,
    WorkOrder,
)
from streams.replies import Reason, Refusal
from streams.subjects import Space

__all__ = [
    "Handler",
    "NonRetryable",
    "Result",
    "StepContext",
    "Worker",
    "http_handler",
    "subprocess_handler",
]

log = structlog.get_logger("moon.worker")
REPORT_TIMEOUT_S = 2.0
PULL_WAIT_S = 1.0  # a pull waits this long for an order before asking again
PULL_GRACE_S = 1.0  # beyond its expiry: an order answering a pull given up on waits its ack wait
CLAIM_TIMEOUT_S = 2.0
CLAIM_MARGIN_S = 1.0  # of the ack wait: a claim answered later than this is not trusted
PULL_PAUSE_S = 0.25  # after a fetch that failed for another reason than an empty queue
BACKOFF_S = (0.1, 2.0)  # first and longest pause between sends while the broker is away


class NonRetryable(Exception):
    """Raise from a handler to fail the step without retries (e.g. invalid input)."""


class Result(msgspec.Struct, frozen=True):
    """What a handler returns: the output and the tokens it spent (wall time is measured)."""

    output: bytes = b""
    tokens: int = 0


@dataclass
class StepContext:
    order: WorkOrder
    worker: Worker

    @property
    def key(self) -> str:
        return self.order.idempotency_key

    @property
    def inputs(self) -> Mapping[str, bytes]:
        return self.order.input

    @property
    def resume_from(self) -> bytes | None:
        """The last checkpoint an earlier attempt of this step saved, if any."""
        return self.order.checkpoint

    async def checkpoint(self, state: bytes) -> None:
        """Journal progress: a retry after a crash starts from here."""
        await self.worker.deliver(
            self.order,
            CheckpointStep(
                command_id=f"ckpt/{self.key}/{uuid.uuid4().hex[:12]}",
                workflow_id=self.order.workflow_id, at_ms=_now_ms(), step=self.order.step,
                attempt=self.order.attempt, state=state, claim=self.order.claim,
            ),
        )

    async def heartbeat(self) -> None:
        """Best effort: a beat lost to a broker restart is made up by the next one, and the
        engine's heartbeat timeout, not this call, decides whether we are alive."""
        beat = Heartbeat(
            command_id=f"hb/{self.key}/{uuid.uuid4().hex[:12]}",
            workflow_id=self.order.workflow_id, at_ms=_now_ms(), step=self.order.step,
            attempt=self.order.attempt, claim=self.order.claim,
        )
        try:
            await self.worker.send(self.order, beat)
        except Exception as error:  # any send failure means the same here
            log.debug("heartbeat_lost", key=self.key, error=repr(error))


Handler = Callable[[StepContext], Awaitable[Result | bytes]]
_reply = msgspec.json.Decoder(ReportReply)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _dropped(sub: Any) -> None:
    with contextlib.suppress(Exception):
        await sub.unsubscribe()


async def _quietly(settle: Callable[[], Awaitable[object]]) -> None:
    """Nak or term, or the ack of an order not run: a broker that is away redelivers it later,
    to be claimed then."""
    with contextlib.suppress(Exception):
        await settle()


class _Pulled(NamedTuple):
    taken: int  # orders handed to tasks (each frees its own slot)
    refused: bool = False  # ended by a status other than "nothing to take": pause
    lost: bool = False  # its end never came: drop its inbox


@dataclass
class Worker:
    """One executor process: serves capabilities, bound to its own orders and shared pools.
    `signer` is the executor's own key, the one the registry names for `executor_id`."""

    nc: Client
    executor_id: str
    handlers: dict[str, Handler]
    signer: Signer
    engines: frozenset[str]  # whose work orders it runs: the engines' DIDs
    space: Space = field(default_factory=Space)
    watts: float = 0.0
    capacity: int = 8
    # Orders of a capability in flight across the whole pool (the sum of its capacities): more
    # would sit in a busy worker's buffer while their deadlines run and others idle.
    pool_capacity: int = 64
    # An order fetched but not claimed (its worker died, the answer was lost) comes back after
    # this; a claim answered later than ack_wait - CLAIM_MARGIN_S after its pull is not
    # trusted. At 30 s the pool got no orders for 30 s after a node's kill -9.
    ack_wait_s: float = 5.0
    executed: int = 0  # attempts this process ran to completion: for stats
    # Offer, with each completion, to run the order it schedules next in the same slot: it
    # comes in the engine's answer instead of through WORK (moon/handoff.py).
    eager: bool = True
    # Report to the engine process that sent the order (its cache holds the workflow); off:
    # to any engine of the queue group, as when that one has gone.
    to_sender: bool = True

    def __post_init__(self) -> None:
        self.js = self.nc.jetstream()
        self._slots = asyncio.Semaphore(self.capacity)
        self._stopping = asyncio.Event()
        self._keys = KeyRing()
        # Order deadlines are the engine's, by the broker's clock: compared on the same clock,
        # a worker whose own clock is off neither drops live orders nor runs dead ones.
        self.clock = BrokerClock(self.nc, f"$JS.API.STREAM.INFO.{self.space.stream('WORK')}")

    async def request(self, report: Report, *, retry: bool = False,
                      engine: str = "") -> ReportReply:
        """One signed report, answered by the engine once what it causes is journaled: first
        to `engine` (the process that sent the order, whose cache holds the workflow), to any
        engine when that one has gone (no responders: the report reached nobody) or on a
        retry (it may be alive but stuck)."""
        headers = {RETRY_HEADER: "1"} if retry else None
        data = seal_report(self.signer, report)
        if engine and self.to_sender and not retry:
            try:
                msg = await self.nc.request(
                    report_subject(self.space, self.executor_id, report, engine), data,
                    timeout=REPORT_TIMEOUT_S)
                return _reply.decode(msg.data)
            except nats.errors.NoRespondersError:
                pass
        msg = await self.nc.request(report_subject(self.space, self.executor_id, report),
                                    data, timeout=REPORT_TIMEOUT_S, headers=headers)
        return _reply.decode(msg.data)

    async def send(self, order: WorkOrder, report: Report) -> None:
        """Once, best effort (heartbeats)."""
        await self.request(report, engine=order.engine)

    async def deliver(self, order: WorkOrder, report: Report) -> ReportReply | None:
        """Send a report until the engine answers it; None if it stayed away past the order's
        deadline (the engine's step timeout has settled that attempt by then). A retry after an
        unanswered try is marked, so the engine re-sends what the first may have left unsent."""
        pause, retry = BACKOFF_S[0], False
        while True:
            try:
                answer = await self.request(report, retry=retry, engine=order.engine)
            except Exception as error:  # timeouts, no responders, reconnecting
                failure = repr(error)
            else:
                if answer.ok or answer.reason != Reason.UNAVAILABLE.value:
                    if not answer.ok:
                        log.warning("report_refused", key=order.idempotency_key,
                                    command=report.command_id, reason=answer.reason,
                                    detail=answer.detail)
                    return answer
                failure = answer.detail
            if self.clock() > order.deadline_ms:
                log.warning("report_lost", key=order.idempotency_key, command=report.command_id,
                            error=failure)
                return None
            retry = True
            await asyncio.sleep(pause)
            pause = min(pause * 2, BACKOFF_S[1])

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Pull orders from this executor's own consumer and its capabilities' pool consumers.
        Pull, not push: a pool's push consumer delivers into one inbox, which on a broker with
        per-user inboxes only its first member could read."""
        await self.clock.sync()
        pulls: list[tuple[str, float]] = []
        own = f"exec-{subjects.token(self.executor_id)}"
        filters = [(subjects.work(self.executor_id), own)]
        filters += [(subjects.work_any(c), f"any-{subjects.token(c)}") for c in self.handlers]
        stream = self.space.stream("WORK")
        for subject, name in filters:
            # The executor's own consumer is its alone; a capability's is the pool's, and the
            # first worker to create it sets its limit for all.
            limit = self.capacity if name == own else self.pool_capacity
            durable = self.space.consumer(name)
            try:  # the pool's consumer may exist already: as its creator made it
                info = await self.js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                info = await self.js.add_consumer(stream, api.ConsumerConfig(
                    name=durable, durable_name=durable,
                    filter_subject=self.space.subject(subject),
                    ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s,
                    max_ack_pending=limit, max_deliver=-1,
                ))
            # The claim is timed against the ack wait the broker applies, whoever set it.
            ack_wait = min(self.ack_wait_s, info.config.ack_wait or self.ack_wait_s)
            pulls.append((f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}", ack_wait))
        async with asyncio.TaskGroup() as tasks:
            # A busy puller may hold its share of the slots in one pull, an idle one one slot:
            # neither starves the other.
            most = max(1, self.capacity // len(pulls))
            pullers = [tasks.create_task(self._pull(subject, ack_wait, tasks, most))
                       for subject, ack_wait in pulls]
            pullers.append(tasks.create_task(self.clock.run()))
            if ready is not None:
                ready.set()
            try:
                await self._stopping.wait()
            finally:
                for puller in pullers:
                    puller.cancel()

    async def _pull(self, next_subject: str, ack_wait: float, tasks: asyncio.TaskGroup,
                    most: int = 1) -> None:
        """Ask for orders for free slots, one pull at a time on an inbox of this puller's: a
        JetStream message keeps its own subject, so only the subscription tells which pull it
        answers, and with one pull out at a time (it ends when its batch is delivered, or with
        a status) every message on it answers the pull just sent. The claim's clock starts at
        that pull: the broker's ack wait for each order starts at its delivery, no sooner. While
        orders keep coming one pull asks for several (up to `most`): each order had a pull of
        its own, a message into the broker and a write out of this process."""
        sub, size = None, 1
        try:
            while not self._stopping.is_set():
                # A pull holds its slots while it waits: one only, unless the last one filled
                # its whole batch (orders are coming): then twice as many, up to `most`.
                wanted = await self._free_slots(size)
                if sub is None:
                    sub = await self.nc.subscribe(self.nc.new_inbox())
                asked = time.monotonic()
                ask = msgspec.json.encode({"batch": wanted, "expires": int(PULL_WAIT_S * 1e9)})
                try:
                    await self.nc.publish(next_subject, ask, reply=sub.subject)
                except Exception as error:  # the broker is away: ask again, later
                    self._release(wanted)
                    await _dropped(sub)
                    sub = None
                    log.debug("fetch_failed", error=repr(error))
                    await asyncio.sleep(PULL_PAUSE_S)
                    continue
                got = await self._orders(sub, wanted, asked, ack_wait, tasks)
                self._release(wanted - got.taken)
                if got.taken < wanted:
                    size = 1  # the queue ran dry (or the pull was lost)
                elif wanted == size:
                    size = min(most, 2 * size)
                if got.lost:
                    # Neither the batch nor the pull's end came: an answer may still be on its
                    # way, and would be taken for the next pull's. A new inbox; anything sent
                    # to this one reaches no one and is redelivered after the ack wait.
                    await _dropped(sub)
                    sub = None
                if got.refused:
                    await asyncio.sleep(PULL_PAUSE_S)
        finally:
            if sub is not None:
                await _dropped(sub)

    async def _free_slots(self, most: int) -> int:
        """Wait for one free slot, then take the others free now, up to `most`."""
        await self._slots.acquire()
        taken = 1
        while taken < most and not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            taken += 1
        return taken

    def _release(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    async def _orders(self, sub: Any, wanted: int, asked: float, ack_wait: float,
                      tasks: asyncio.TaskGroup) -> _Pulled:
        """The orders answering one pull, each taken in a task of its own (which frees its slot
        when done), until the batch is in or a status ends the pull."""
        taken = 0
        deadline = asked + PULL_WAIT_S + PULL_GRACE_S
        while taken < wanted:
            try:
                msg = await sub.next_msg(timeout=max(0.001, deadline - time.monotonic()))
            except (TimeoutError, nats.errors.TimeoutError):
                return _Pulled(taken, lost=True)
            except Exception as error:  # the connection went: the pull is gone with it
                log.debug("fetch_failed", error=repr(error))
                return _Pulled(taken, lost=True, refused=True)
            status = msg.headers.get("Status") if msg.headers else None
            if status is not None or not msg.reply:  # 404/408: nothing (more) to take
                refused = status not in ("404", "408")
                if refused:
                    log.debug("fetch_refused", status=status,
                              detail=msg.headers.get("Description") if msg.headers else None)
                return _Pulled(taken, refused=refused)
            task = tasks.create_task(self._take(msg, asked, ack_wait))
            task.add_done_callback(lambda _: self._slots.release())
            taken += 1
        return _Pulled(taken)

    def stop(self) -> None:
        self._stopping.set()

    async def run_until_ready(self, ready: asyncio.Event) -> None:
        await self.run(ready=ready)

    def _order(self, data: bytes, subject: str) -> WorkOrder | None:
        """The engine's order these bytes are, or None (logged): never run, never redelivered."""
        verified = open_statement(data, ORDER, keys=self._keys, authors=self.engines)
        if isinstance(verified, Refusal):  # not an engine's order
            log.warning("order_refused", subject=subject, reason=verified.reason.value,
                        detail=verified.detail)
            return None
        order = ORDERS.try_decode(verified.body, subject=subject)
        if isinstance(order, Undecodable):
            log.warning("order_malformed", subject=order.subject, error=order.error)
            return None
        return order

    async def _take(self, msg: Msg, asked: float, ack_wait: float) -> None:
        order = self._order(msg.data, msg.subject)
        if order is None:
            await _quietly(msg.term)
            return
        if order.deadline_ms and order.deadline_ms < self.clock():
            await _quietly(msg.ack)  # the engine's timeout timer has settled this attempt
            return
        handler = self.handlers.get(order.capability)
        if handler is None:
            await _quietly(lambda: msg.nak(delay=1))  # another worker of the pool may serve it
            return
        if not await self._claim(order, msg, asked, ack_wait):
            return
        handed = await self._run(order, handler)
        while handed is not None:  # in this slot: the order came instead of the next pull
            handed = await self._run(*handed)

    def _handed(self, answer: ReportReply | None, after: WorkOrder
                ) -> tuple[WorkOrder, Handler] | None:
        """The order a completion's answer handed us (moon/handoff.py): ours alone, so there is
        nothing to claim. One we cannot run is left to its step's timeout, as a claimed order
        whose executor dies: it is in no queue for anyone else to take."""
        if answer is None or answer.order is None:
            return None
        order = self._order(answer.order, f"answer to {after.idempotency_key}")
        if order is None:
            return None
        handler = self.handlers.get(order.capability)
        if handler is None or (order.deadline_ms and order.deadline_ms < self.clock()):
            log.warning("handed_order_dropped", key=order.idempotency_key,
                        capability=order.capability)
            return None
        return order, handler

    def _take_next(self) -> tuple[str, ...]:
        """What a completion offers to run next in its slot: nothing once stopping."""
        return () if self._stopping.is_set() or not self.eager else tuple(self.handlers)

    async def _claim(self, order: WorkOrder, msg: Msg, asked: float, ack_wait: float) -> bool:
        """Acknowledge the order and wait for the broker's answer: True if the order is ours.
        Not ours: the answer never came (it may have been taken: the step's timeout settles
        it, or it comes back to someone), or it came too late to be sure nobody else got it."""
        try:
            await msg.ack_sync(timeout=CLAIM_TIMEOUT_S)
        except Exception as error:  # timeouts, reconnecting: not known to be ours
            log.warning("claim_unanswered", key=order.idempotency_key, error=repr(error))
            return False
        took = time.monotonic() - asked
        if took >= ack_wait - min(CLAIM_MARGIN_S, ack_wait / 2):
            log.warning("claim_late", key=order.idempotency_key, seconds=round(took, 3))
            return False
        return True

    async def _run(self, order: WorkOrder, handler: Handler
                   ) -> tuple[WorkOrder, Handler] | None:
        """Run the attempt and report it; the order its completion's answer handed us, if any."""
        wf, step, attempt = order.workflow_id, order.step, order.attempt
        key = order.idempotency_key
        beat = asyncio.ensure_future(self._keep_alive(order))
        started = time.perf_counter()
        report: FailStep | CompleteStep
        try:
            outcome = await tracing.run_step(order, self.executor_id,
                                             handler(StepContext(order=order, worker=self)))
        except Exception as error:  # a failed step is a fact to report, not a crash
            metrics.labelled(metrics.WORKER_STEPS, order.capability, "failed").inc()
            report = FailStep(
                command_id=f"fail/{key}", at_ms=_now_ms(), error=str(error)[:2000] or repr(error),
                error_type=type(error).__name__, retryable=not isinstance(error, NonRetryable),
                usage=self._usage(started, 0), workflow_id=wf, step=step, attempt=attempt,
                claim=order.claim,
            )
        else:
            result = outcome if isinstance(outcome, Result) else Result(output=outcome)
            self.executed += 1
            metrics.labelled(metrics.WORKER_STEPS, order.capability, "completed").inc()
            report = CompleteStep(
                command_id=f"done/{key}", at_ms=_now_ms(), result=result.output,
                usage=self._usage(started, result.tokens), workflow_id=wf, step=step,
                attempt=attempt, claim=order.claim, take=self._take_next(),
            )
        finally:
            beat.cancel()
        return self._handed(await self.deliver(order, report), order)

    def _usage(self, started: float, tokens: int) -> Usage:
        wall_s = time.perf_counter() - started
        return Usage(tokens=tokens, wall_ms=int(wall_s * 1000), joules=self.watts * wall_s)

    async def _keep_alive(self, order: WorkOrder) -> None:
        """Tell the engine we are alive (its heartbeat timeout). The first beat binds the
        attempt to us, so it goes at once."""
        if not order.heartbeat_timeout_ms:
            return
        ctx = StepContext(order=order, worker=self)
        while True:
            await ctx.heartbeat()
            await asyncio.sleep(order.heartbeat_timeout_ms / 1000 / 3)


def subprocess_handler(argv: Sequence[str], *, timeout_s: float = 300.0) -> Handler:
    """Run a command: the order as JSON on stdin, stdout is the result, non-zero exit fails."""

    async def run(ctx: StepContext) -> Result:
        payload = json.dumps({
            "key": ctx.key, "step": ctx.order.step, "attempt": ctx.order.attempt,
            "inputs": {k: v.decode(errors="replace") for k, v in ctx.inputs.items()},
            "params": ctx.order.params.decode(errors="replace"),
        }).encode()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(payload), timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err.decode()[-500:]}")
        return Result(output=out)

    return run


def http_handler(url: str, *, timeout_s: float = 60.0) -> Handler:
    """POST the order as JSON; a 2xx body is the result, anything else fails the attempt."""

    def post(body: bytes, key: str) -> bytes:
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's own endpoint
            url, data=body, method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            data: bytes = response.read()
            return data

    async def run(ctx: StepContext) -> Result:
        body = json.dumps({
            "key": ctx.key, "step": ctx.order.step, "attempt": ctx.order.attempt,
            "inputs": {k: v.decode(errors="replace") for k, v in ctx.inputs.items()},
        }).encode()
        return Result(output=await asyncio.to_thread(post, body, ctx.key))

    return run
