"""The executor SDK: take binding work orders, run a handler, report back.

A handler gets a `StepContext`: its idempotency key (`workflow/step/attempt`), the results of the
steps it depends on, the last checkpoint of an earlier attempt, and `checkpoint()`/`heartbeat()`.
Results go back as commands on MOON_CMD; the engine ignores reports for stale attempts.

An attempt runs at most once, a step at least once. Before running an order the worker claims its
idempotency key in the `moon_claims` bucket (a create, so exactly one claimant wins, and the claim
is journaled like any JetStream write). A redelivered order whose key is claimed is acked, not
run, whoever claimed it and whatever happened since. Why not remember keys per process, or ack the
order before reporting: a redelivery reaches another executor of the pool, or this one after a
kill -9, and a broker restart can rewind the work consumer or forget the order's `Nats-Msg-Id`
(the engine re-sends in-flight orders); every one of those re-ran an attempt whose side effects
were done. Why claim before running, not after: a "done" mark written after the side effect
leaves a window (effect done, mark not yet stored) in which a kill makes the effect happen twice.
What a claim costs: an attempt whose executor dies is not run again under the same key; the
engine's step timeout or heartbeat timeout settles it and schedules the next attempt, which gets
the last checkpoint. Give long steps a heartbeat timeout so that takes seconds, not `timeout_ms`.
Three kinds of executor share this loop: an in-process Python handler, a subprocess command and
an HTTP call (see `subprocess_handler` and `http_handler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import KeyWrongLastSequenceError

from moon.effects import ORDERS, Effects
from streams import metrics, subjects
from streams.codec import Undecodable
from streams.config import CLAIMS, ensure_bucket
from streams.moon_events import (
    CheckpointStep,
    CompleteStep,
    FailStep,
    Heartbeat,
    StartStep,
    Usage,
    WorkOrder,
)
from streams.subjects import Space

__all__ = [
    "Handler",
    "NonRetryable",
    "Result",
    "StepContext",
    "Worker",
    "claims_bucket",
    "http_handler",
    "subprocess_handler",
]

log = structlog.get_logger("moon.worker")
SEEN_KEYS = 100_000
T = TypeVar("T")
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
                attempt=self.order.attempt, state=state,
            ),
        )

    async def heartbeat(self) -> None:
        """Best effort: a beat lost to a broker restart is made up by the next one, and the
        engine's heartbeat timeout, not this call, decides whether we are alive."""
        beat = Heartbeat(
            command_id=f"hb/{self.key}/{uuid.uuid4().hex[:12]}",
            workflow_id=self.order.workflow_id, at_ms=_now_ms(), step=self.order.step,
            attempt=self.order.attempt,
        )
        try:
            await self.worker.send(beat)
        except Exception as error:  # any send failure means the same here
            log.debug("heartbeat_lost", key=self.key, error=repr(error))


Handler = Callable[[StepContext], Awaitable[Result | bytes]]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _claim_key(order: WorkOrder) -> str:
    return ("undo:" if order.compensation else "") + order.idempotency_key


def _kv_key(claim: str) -> str:
    # Step ids may hold ':', which KV keys may not: a digest is always a valid key.
    return hashlib.sha256(claim.encode()).hexdigest()[:40]


async def claims_bucket(js: JetStreamContext, space: Space, replicas: int = 1) -> Any:
    """The bucket of claimed idempotency keys, made as `ensure_streams` would if it is missing."""
    await ensure_bucket(js, space, CLAIMS, replicas)
    return await js.key_value(space.bucket(CLAIMS.name))


async def _persist(deadline_ms: int, attempt: Callable[[], Awaitable[T]], *, what: str,
                   key: str) -> T | None:
    """Try until the broker answers, riding out a restart; None once the order's deadline has
    passed, since the engine's step timeout has settled that attempt by then."""
    pause = BACKOFF_S[0]
    while True:
        try:
            return await attempt()
        except Exception as error:  # timeouts, no responders, reconnecting
            if _now_ms() > deadline_ms:
                log.warning(what, key=key, error=repr(error))
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, BACKOFF_S[1])


async def _quietly(settle: Callable[[], Awaitable[object]]) -> None:
    """Ack, nak or term: a broker that is away redelivers later, which the claim makes safe."""
    with contextlib.suppress(Exception):
        await settle()


@dataclass
class Worker:
    """One executor process: serves capabilities, bound to its own orders and shared pools."""

    nc: Client
    executor_id: str
    handlers: dict[str, Handler]
    space: Space = field(default_factory=Space)
    watts: float = 0.0
    capacity: int = 8
    # Orders of a capability in flight across the whole pool (the sum of its capacities): more
    # would sit in a busy worker's buffer while their deadlines run and others idle.
    pool_capacity: int = 64
    replicas: int = 1  # of the claims bucket, if this worker is the first to need it
    # An order a dead broker node delivered, or whose ack it took with it, comes back after
    # this; the claim makes the redelivery harmless and _keep_alive marks running steps in
    # progress every ack_wait/3. At 30 s the pool got no orders for 30 s after a node's kill -9.
    ack_wait_s: float = 5.0
    executed: int = 0  # attempts this process ran to completion: for stats

    def __post_init__(self) -> None:
        self.js = self.nc.jetstream()
        self.effects = Effects(self.js, self.space)
        self._slots = asyncio.Semaphore(self.capacity)
        self._stopping = asyncio.Event()
        # Keys this process has settled: spares the claim's round trip for a redelivery that
        # comes back here. Bounded, oldest out; the claims bucket is the record that counts.
        self._seen: dict[str, None] = {}
        self._claims: Any = None
        self._incarnation = uuid.uuid4().hex[:12]

    async def send(self, command: Any) -> None:
        await self.effects.send_command(command)

    async def deliver(self, order: WorkOrder, command: Any) -> bool:
        """Send a report for `order`; False if the broker stayed away past its deadline."""
        async def send() -> bool:
            await self.send(command)
            return True

        return await _persist(order.deadline_ms, send, what="report_lost",
                              key=f"{order.idempotency_key} {command.command_id}") is not None

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        self._claims = await claims_bucket(self.js, self.space, self.replicas)
        subs = []
        async with asyncio.TaskGroup() as tasks:

            async def on_msg(msg: Msg) -> None:
                await self._slots.acquire()
                task = tasks.create_task(self._take(msg))
                task.add_done_callback(lambda _: self._slots.release())

            own = f"exec-{subjects.token(self.executor_id)}"
            filters = [(subjects.work(self.executor_id), own)]
            filters += [(subjects.work_any(c), f"any-{subjects.token(c)}") for c in self.handlers]
            for subject, name in filters:
                durable = self.space.consumer(name)
                # The executor's own consumer is its alone; a capability's is the pool's, and
                # the first worker to create it sets its limit for all.
                limit = self.capacity if name == own else self.pool_capacity
                subs.append(
                    await self.js.subscribe(
                        self.space.subject(subject), stream=self.space.stream("WORK"),
                        durable=durable, queue=durable, cb=on_msg, manual_ack=True,
                        config=api.ConsumerConfig(
                            ack_wait=self.ack_wait_s, max_ack_pending=limit, max_deliver=-1
                        ),
                    )
                )
            if ready is not None:
                ready.set()
            try:
                await self._stopping.wait()
            finally:
                for sub in subs:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()

    def stop(self) -> None:
        self._stopping.set()

    async def run_until_ready(self, ready: asyncio.Event) -> None:
        await self.run(ready=ready)

    async def _take(self, msg: Msg) -> None:
        order = ORDERS.try_decode(msg.data, seq=msg.metadata.sequence.stream, subject=msg.subject)
        if isinstance(order, Undecodable):
            log.warning("order_malformed", seq=order.seq, error=order.error)
            await _quietly(msg.term)
            return
        if order.deadline_ms and order.deadline_ms < _now_ms():
            await _quietly(msg.ack)  # the engine's timeout timer has settled this attempt
            return
        handler = self.handlers.get(order.capability)
        if handler is None:
            await _quietly(lambda: msg.nak(delay=1))  # another worker of the pool may serve it
            return
        key = _claim_key(order)
        if key in self._seen:
            await _quietly(msg.ack)  # run (or running) here already
            return
        claimed = await self._claim(key, order.deadline_ms)
        if claimed is None:
            return  # the broker stayed away past the deadline: a redelivery is acked unrun
        self._seen[key] = None
        if len(self._seen) > SEEN_KEYS:
            del self._seen[next(iter(self._seen))]
        if claimed:
            await self._run(order, handler, msg)
        await _quietly(msg.ack)

    async def _claim(self, key: str, deadline_ms: int) -> bool | None:
        """True: ours to run. False: claimed before (here or elsewhere, finished or not).
        None: the broker did not answer before the order's deadline."""
        token = f"{self.executor_id} {self._incarnation} {uuid.uuid4().hex[:12]}".encode()
        return await _persist(deadline_ms, lambda: self._try_claim(_kv_key(key), token),
                              what="claim_unanswered", key=key)

    async def _try_claim(self, name: str, token: bytes) -> bool:
        try:
            await self._claims.create(name, token)
        except KeyWrongLastSequenceError:
            # Taken; by this very call if an earlier try landed and only its reply was lost.
            entry = await self._claims.get(name)
            return bool(entry.value == token)
        return True

    async def _run(self, order: WorkOrder, handler: Handler, msg: Msg) -> None:
        wf, step, attempt = order.workflow_id, order.step, order.attempt
        key = order.idempotency_key
        if not await self.deliver(order, StartStep(
            command_id=f"start/{key}", at_ms=_now_ms(), workflow_id=wf, step=step,
            attempt=attempt, executor=self.executor_id,
        )):
            return  # past its deadline: the engine has moved on to the next attempt

        beat = asyncio.ensure_future(self._keep_alive(order, msg))
        started = time.perf_counter()
        report: FailStep | CompleteStep
        try:
            outcome = await handler(StepContext(order=order, worker=self))
        except Exception as error:  # a failed step is a fact to report, not a crash
            metrics.WORKER_STEPS.labels(order.capability, "failed").inc()
            report = FailStep(
                command_id=f"fail/{key}", at_ms=_now_ms(), error=str(error)[:2000] or repr(error),
                error_type=type(error).__name__, retryable=not isinstance(error, NonRetryable),
                usage=self._usage(started, 0), workflow_id=wf, step=step, attempt=attempt,
            )
        else:
            result = outcome if isinstance(outcome, Result) else Result(output=outcome)
            self.executed += 1
            metrics.WORKER_STEPS.labels(order.capability, "completed").inc()
            report = CompleteStep(
                command_id=f"done/{key}", at_ms=_now_ms(), result=result.output,
                usage=self._usage(started, result.tokens), workflow_id=wf, step=step,
                attempt=attempt,
            )
        finally:
            beat.cancel()
        await self.deliver(order, report)

    def _usage(self, started: float, tokens: int) -> Usage:
        wall_s = time.perf_counter() - started
        return Usage(tokens=tokens, wall_ms=int(wall_s * 1000), joules=self.watts * wall_s)

    async def _keep_alive(self, order: WorkOrder, msg: Msg) -> None:
        """Tell JetStream (ack wait) and the engine (heartbeat timeout) that we are alive."""
        period = min(self.ack_wait_s, (order.heartbeat_timeout_ms or 60_000) / 1000) / 3
        ctx = StepContext(order=order, worker=self)
        while True:
            await asyncio.sleep(period)
            await _quietly(msg.in_progress)  # a beat missed while the broker restarts is fine
            if order.heartbeat_timeout_ms:
                await ctx.heartbeat()


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
