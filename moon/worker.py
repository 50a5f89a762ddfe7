"""The executor SDK: take binding work orders, run a handler, report back. At-least-once.

A handler gets a `StepContext`: its idempotency key (`workflow/step/attempt`), the results of the
steps it depends on, the last checkpoint of an earlier attempt, and `checkpoint()`/`heartbeat()`.
Results go back as commands on MOON_CMD; the engine ignores reports for stale attempts.
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
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from moon.effects import ORDERS, Effects
from streams import subjects
from streams.codec import Undecodable
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
    "http_handler",
    "subprocess_handler",
]

log = structlog.get_logger("moon.worker")
SEEN_KEYS = 100_000


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
        await self.worker.send(
            CheckpointStep(
                command_id=f"ckpt/{self.key}/{uuid.uuid4().hex[:12]}",
                workflow_id=self.order.workflow_id, at_ms=_now_ms(), step=self.order.step,
                attempt=self.order.attempt, state=state,
            )
        )

    async def heartbeat(self) -> None:
        await self.worker.send(
            Heartbeat(
                command_id=f"hb/{self.key}/{uuid.uuid4().hex[:12]}",
                workflow_id=self.order.workflow_id, at_ms=_now_ms(), step=self.order.step,
                attempt=self.order.attempt,
            )
        )


Handler = Callable[[StepContext], Awaitable[Result | bytes]]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Worker:
    """One executor process: serves capabilities, bound to its own orders and shared pools."""

    nc: Client
    executor_id: str
    handlers: dict[str, Handler]
    space: Space = field(default_factory=Space)
    watts: float = 0.0
    capacity: int = 8
    ack_wait_s: float = 30.0
    executed: list[str] = field(default_factory=list)  # idempotency keys, for tests and stats

    def __post_init__(self) -> None:
        self.js = self.nc.jetstream()
        self.effects = Effects(self.js, self.space)
        self._slots = asyncio.Semaphore(self.capacity)
        self._stopping = asyncio.Event()
        # Keys this process has run or is running: a redelivered order (a lost ack, a broker
        # restart that rewound the consumer) is acked, not run again. Bounded, oldest out.
        self._seen: dict[str, None] = {}

    async def send(self, command: Any) -> None:
        await self.effects.send_command(command)

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
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
                subs.append(
                    await self.js.subscribe(
                        self.space.subject(subject), stream=self.space.stream("WORK"),
                        durable=durable, queue=durable, cb=on_msg, manual_ack=True,
                        config=api.ConsumerConfig(
                            ack_wait=self.ack_wait_s, max_ack_pending=self.capacity, max_deliver=-1
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
            await msg.term()
            return
        if order.deadline_ms and order.deadline_ms < _now_ms():
            await msg.ack()  # the engine's timeout timer has already settled this attempt
            return
        handler = self.handlers.get(order.capability)
        if handler is None:
            await msg.nak(delay=1)  # another worker of the pool may serve it
            return
        key = ("undo:" if order.compensation else "") + order.idempotency_key
        if key in self._seen:
            await msg.ack()  # already run (or running) here: its report is on its way
            return
        self._seen[key] = None
        if len(self._seen) > SEEN_KEYS:
            del self._seen[next(iter(self._seen))]
        try:
            await self._run(order, handler, msg)
        except BaseException:
            self._seen.pop(key, None)  # not reported: a redelivery must run it
            raise

    async def _run(self, order: WorkOrder, handler: Handler, msg: Msg) -> None:
        wf, step, attempt = order.workflow_id, order.step, order.attempt
        key = order.idempotency_key
        await self.send(StartStep(command_id=f"start/{key}", at_ms=_now_ms(), workflow_id=wf,
                                  step=step, attempt=attempt, executor=self.executor_id))
        beat = asyncio.ensure_future(self._keep_alive(order, msg))
        started = time.perf_counter()
        try:
            outcome = await handler(StepContext(order=order, worker=self))
        except Exception as error:  # a failed step is a fact to report, not a crash
            usage = self._usage(started, 0)
            await self.send(FailStep(
                command_id=f"fail/{key}", at_ms=_now_ms(), error=str(error)[:2000] or repr(error),
                error_type=type(error).__name__, retryable=not isinstance(error, NonRetryable),
                usage=usage, workflow_id=wf, step=step, attempt=attempt,
            ))
        else:
            result = outcome if isinstance(outcome, Result) else Result(output=outcome)
            self.executed.append(("undo:" if order.compensation else "") + key)
            await self.send(CompleteStep(
                command_id=f"done/{key}", at_ms=_now_ms(), result=result.output,
                usage=self._usage(started, result.tokens), workflow_id=wf, step=step,
                attempt=attempt,
            ))
        finally:
            beat.cancel()
        await msg.ack()

    def _usage(self, started: float, tokens: int) -> Usage:
        wall_s = time.perf_counter() - started
        return Usage(tokens=tokens, wall_ms=int(wall_s * 1000), joules=self.watts * wall_s)

    async def _keep_alive(self, order: WorkOrder, msg: Msg) -> None:
        """Tell JetStream (ack wait) and the engine (heartbeat timeout) that we are alive."""
        period = min(self.ack_wait_s, (order.heartbeat_timeout_ms or 60_000) / 1000) / 3
        ctx = StepContext(order=order, worker=self)
        while True:
            await asyncio.sleep(period)
            await msg.in_progress()
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
