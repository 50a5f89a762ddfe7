"""The NATS shell around open_envelope: one handler per method, served on request/reply and intents.

The only envelope module with NATS, the clock, randomness and logs. Both paths (`map.<svc>.<m>`
request/reply and the durable `intent.<svc>.<m>` consumer) go through `answer()`, so a method
behaves the same whichever way a request arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from envelope.audit import AuditLog
from envelope.budget import Ledger, MemoryLedger
from envelope.keys import Signer
from envelope.seal import (
    VERSION,
    NonceCache,
    Opened,
    Response,
    Trust,
    open_envelope,
    request_hash,
    seal_response,
)
from envelope.trace import is_valid_traceparent, trace_id
from envelope.treaty import TreatyLimiter
from streams import metrics
from streams.audit import AuditRecord, Outcome
from streams.replies import Reason, Refusal
from streams.subjects import Space, intent, map_request

ROOT_SPACE = Space()

__all__ = ["OUTCOMES_BUCKET", "Gate", "Handler", "Stored", "wall_ms"]

Handler = Callable[[Opened], Awaitable[msgspec.Struct | Refusal]]
OUTCOMES_BUCKET = "envelope_outcomes"
INTENTS_STREAM = "INTENTS"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Stored(msgspec.Struct, frozen=True):
    """KV value under the request id: a claim while running, then the sealed first answer."""

    caller: str
    done: bool
    since_ms: int
    response: bytes = b""


class _Route(msgspec.Struct, frozen=True):
    method: str
    capability: str
    handler: Handler


_stored = msgspec.msgpack.Decoder(Stored)
_encode = msgspec.msgpack.encode
# Refusals a caller can fix by waiting or re-sealing: not the request's final answer, so they are
# neither stored as its outcome nor deduplicated against a later successful attempt.
_TRANSIENT = frozenset(
    {Reason.RATE_LIMITED, Reason.EXPIRED, Reason.NOT_YET_VALID, Reason.REPLAYED, Reason.UNAVAILABLE}
)


class Gate:
    """Put in front of a service's handlers; every request leaves exactly one audit record.

    gate = Gate(nc, service="moon", signer=moon_key, trust=trust, space=space)
    gate.route("dispatch", handle_dispatch)        # capability moon:dispatch
    async with gate.serving():                     # or: tasks.create_task(gate.run())
        ...
    """

    def __init__(
        self,
        nc: Nats,
        *,
        service: str,
        signer: Signer,
        trust: Trust,
        space: Space = ROOT_SPACE,
        ledger: Ledger | None = None,
        limiter: TreatyLimiter | None = None,
        clock: Callable[[], int] = wall_ms,
        outcomes_bucket: str = OUTCOMES_BUCKET,
        intents_stream: str = INTENTS_STREAM,
        claim_lease_ms: int = 30_000,
        junk_rate_per_s: float = 20.0,
        junk_burst: int = 200,
        concurrency: int = 256,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.service = service
        self.signer = signer
        self.trust = trust
        self.space = space
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.limiter = limiter if limiter is not None else TreatyLimiter()
        self.nonces = NonceCache()
        self.clock = clock
        self.audit = AuditLog(
            self.js, space=space, junk_rate_per_s=junk_rate_per_s, junk_burst=junk_burst
        )
        self._bucket = space.bucket(outcomes_bucket)
        self._stream = space.stream(intents_stream)
        self._lease_ms = claim_lease_ms
        self._routes: dict[str, _Route] = {}
        self._log = structlog.get_logger("envelope.gate").bind(service=service)
        self.ready = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._in_hand: set[asyncio.Task[None]] = set()

    def route(self, method: str, handler: Handler, *, capability: str | None = None) -> None:
        """Serve `method`; the subject stands for `capability` (default `<service>:<method>`)."""
        self._routes[method] = _Route(method, capability or f"{self.service}:{method}", handler)

    # -- serving --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve every route on both paths until cancelled; requests in hand then finish."""
        kv = await self.js.key_value(self._bucket)
        subs = []
        try:
            for route in self._routes.values():
                subs.append(
                    await self.nc.subscribe(
                        self.space.subject(map_request(self.service, route.method)),
                        queue=self.space.consumer(self.service),
                        cb=self._on_request(route, kv),
                    )
                )
            pulls = [
                await self.js.pull_subscribe(
                    self.space.subject(intent(self.service, route.method)),
                    durable=self.space.consumer(f"{self.service}_{route.method}"),
                    stream=self._stream,
                )
                for route in self._routes.values()
            ]
            await self.nc.flush()
            self.ready.set()
            async with asyncio.TaskGroup() as tasks:
                for route, pull in zip(self._routes.values(), pulls, strict=True):
                    tasks.create_task(self._consume(route, kv, pull))
        finally:
            self.ready.clear()
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
            if self._in_hand:  # answered and audited, not cut off half way
                await asyncio.wait(set(self._in_hand), timeout=10)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Gate]:
        """Run the gate for the life of the block (tests, `… up`)."""
        task = asyncio.get_running_loop().create_task(self.run())
        ready = asyncio.get_running_loop().create_task(self.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()  # re-raise why the gate could not start
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_request(self, route: _Route, kv: Any) -> Callable[[Msg], Awaitable[None]]:
        # nats-py runs a subscription's callbacks one after another: each request gets its own
        # task so that a slow handler (a journal append, a solve) does not hold up the rest.
        # The semaphore is the bound: when it is full the callback waits and the subscription's
        # pending buffer, then the server's slow-consumer limit, push back.
        async def serve(msg: Msg) -> None:
            try:
                response, trace = await self.answer(route, kv, msg.data, msg.headers)
                if msg.reply:
                    headers = {"traceparent": trace} if trace else None
                    await self.nc.publish(msg.reply, response, headers=headers)
            except Exception:  # broken infrastructure: the caller times out and retries
                self._log.exception("request_failed", method=route.method)

        async def on_request(msg: Msg) -> None:
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(serve(msg))
            self._in_hand.add(task)
            task.add_done_callback(self._settled)

        return on_request

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._in_hand.discard(task)
        self._slots.release()

    async def _consume(self, route: _Route, kv: Any, pull: Any) -> None:
        while True:
            try:
                msgs = await pull.fetch(batch=32, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                # nats-py raises either, depending on where in fetch the wait ran out (#418).
                continue
            for msg in msgs:
                await self.answer(route, kv, msg.data, msg.headers)
                await msg.ack()  # after the outcome is stored: a crash before this redelivers

    # -- one request ----------------------------------------------------------------------------

    async def answer(
        self, route: _Route, kv: Any, data: bytes, headers: Mapping[str, str] | None
    ) -> tuple[bytes, str]:
        """Open, dedupe, run, seal, store and audit one request; returns (response, traceparent)."""
        with metrics.GATE_SECONDS.labels(self.service, route.method).time():
            return await self._answer(route, kv, data, headers)

    async def _answer(
        self, route: _Route, kv: Any, data: bytes, headers: Mapping[str, str] | None
    ) -> tuple[bytes, str]:
        now = self.clock()
        opened = open_envelope(
            data,
            trust=self.trust,
            capability=route.capability,
            now_ms=now,
            seen=self.nonces,
            limiter=self.limiter,
            ledger=self.ledger,
        )
        header_trace = (headers or {}).get("traceparent", "")
        with structlog.contextvars.bound_contextvars(method=route.method):
            match opened:
                case Opened():
                    return await self._accepted(route, kv, opened, header_trace, now), (
                        opened.traceparent
                    )
                case Refusal():
                    trace = opened.evidence.get("traceparent", "")
                    return await self._refused(route, kv, data, opened, now), trace or (
                        header_trace if is_valid_traceparent(header_trace) else ""
                    )

    async def _accepted(
        self, route: _Route, kv: Any, opened: Opened, header_trace: str, now: int
    ) -> bytes:
        log = self._log.bind(
            trace=opened.traceparent, request_id=opened.request_id, caller=opened.caller
        )
        if header_trace and (
            not is_valid_traceparent(header_trace)
            or trace_id(header_trace) != trace_id(opened.traceparent)
        ):
            log.info("trace_header_differs", header=header_trace)  # infra may re-parent: no refusal
        earlier = await self._claim(kv, opened.request_id, opened.caller, now)
        if earlier is not None:
            answer, refusal = earlier
            if refusal is None:
                log.info("replayed", outcome="stored")
                self._count(route, "replayed", None)
            else:
                log.info("refused", reason=refusal.reason.value, detail=refusal.detail)
                self._count(route, "refused", refusal.reason)
            return answer
        outcome: Outcome
        try:
            # Bound in contextvars so the handler's own log lines carry the trace too.
            with structlog.contextvars.bound_contextvars(
                trace=opened.traceparent, request_id=opened.request_id, caller=opened.caller
            ):
                reply = await route.handler(opened)
        except Exception as error:
            log.exception("handler_failed")
            reply = Refusal(Reason.UNAVAILABLE, f"{type(error).__name__}: {error}", retryable=True)
            outcome = "failed"
        else:
            outcome = "refused" if isinstance(reply, Refusal) else "accepted"
        record = self._record(
            route,
            opened.request_id,
            opened.request_hash,
            outcome,
            now,
            caller=opened.caller,
            capability=opened.header.capability,
            trace=opened.traceparent,
            refusal=reply if isinstance(reply, Refusal) else None,
        )
        response = self._respond(record, audience=opened.caller, reply=reply)
        if outcome == "failed":
            # Not a final answer: release the claim so a retry runs the handler again.
            await kv.delete(opened.request_id)
            await self.audit.append(record, msg_id=_attempt_id(record.id, opened.request_hash))
        else:
            await kv.put(opened.request_id, _encode(Stored(opened.caller, True, now, response)))
            await self.audit.append(record, msg_id=record.id)
        log.info("answered", outcome=outcome, reason=record.reason)
        self._count(route, outcome, record.reason)
        return response

    def _count(self, route: _Route, outcome: str, reason: Reason | None) -> None:
        metrics.GATE_REQUESTS.labels(
            self.service, route.method, outcome, "" if reason is None else reason.value
        ).inc()

    async def _refused(
        self, route: _Route, kv: Any, data: bytes, refusal: Refusal, now: int
    ) -> bytes:
        digest = request_hash(data)
        caller = refusal.evidence.get("caller")
        if caller is None:
            # Never authenticated: nothing here may name a caller, and storage is rate-limited.
            record = self._record(
                route,
                digest.hex(),
                digest,
                "refused",
                now,
                caller="",
                capability="",
                trace="",
                refusal=refusal,
            )
            await self.audit.append_unauthenticated(record, now_ms=now)
            self._count(route, "refused", refusal.reason)
            return self._respond(record, audience="", reply=refusal)
        request_id = refusal.evidence["request_id"]
        log = self._log.bind(
            trace=refusal.evidence.get("traceparent"), request_id=request_id, caller=caller
        )
        if refusal.reason is Reason.REPLAYED:
            earlier = await self._stored(kv, request_id, caller)
            if earlier is not None:
                log.info("replayed", outcome="stored")
                self.audit.counts["replayed"] += 1
                self._count(route, "replayed", None)
                return earlier
        record = self._record(
            route,
            request_id,
            digest,
            "refused",
            now,
            caller=caller,
            capability=refusal.evidence.get("capability", ""),
            trace=refusal.evidence.get("traceparent", ""),
            refusal=refusal,
        )
        response = self._respond(record, audience=caller, reply=refusal)
        if refusal.reason in _TRANSIENT:
            await self.audit.append(record, msg_id=_attempt_id(request_id, digest))
        else:
            with contextlib.suppress(KeyWrongLastSequenceError):
                await kv.create(request_id, _encode(Stored(caller, True, now, response)))
            await self.audit.append(record, msg_id=request_id)
        log.info("refused", reason=refusal.reason.value)
        self._count(route, "refused", refusal.reason)
        return response

    async def _claim(
        self, kv: Any, request_id: str, caller: str, now: int
    ) -> tuple[bytes, Refusal | None] | None:
        """Claim the request id; None means run the handler. Otherwise the answer to send: the
        first outcome stored (no refusal) or a refusal of this attempt."""
        pending = _encode(Stored(caller, False, now))
        try:
            await kv.create(request_id, pending)
            return None
        except KeyWrongLastSequenceError:
            pass
        entry = await kv.get(request_id)
        stored = _stored.decode(entry.value)

        def refuse(refusal: Refusal) -> tuple[bytes, Refusal]:
            return self._respond_plain(request_id, caller, now, refusal), refusal

        if stored.caller != caller:
            return refuse(Refusal(Reason.REPLAYED, "request id already used by another caller"))
        if stored.done:
            return stored.response, None
        in_progress = Refusal(Reason.REPLAYED, "request in progress", retryable=True,
                              retry_after_ms=250)
        if now - stored.since_ms < self._lease_ms:
            return refuse(in_progress)
        try:  # the earlier claimant died mid-request; take over its claim
            await kv.update(request_id, pending, last=entry.revision)
        except KeyWrongLastSequenceError:
            return refuse(in_progress)
        return None

    async def _stored(self, kv: Any, request_id: str, caller: str) -> bytes | None:
        try:
            entry = await kv.get(request_id)
        except KeyNotFoundError:
            return None
        stored = _stored.decode(entry.value)
        return stored.response if stored.done and stored.caller == caller else None

    def _record(
        self,
        route: _Route,
        record_id: str,
        digest: bytes,
        outcome: Outcome,
        now: int,
        *,
        caller: str,
        capability: str,
        trace: str,
        refusal: Refusal | None,
    ) -> AuditRecord:
        return AuditRecord(
            id=record_id,
            service=self.service,
            method=route.method,
            outcome=outcome,
            request_hash=digest,
            caller=caller,
            caller_verified=bool(caller),
            capability=capability,
            traceparent=trace,
            at=now,
            reason=None if refusal is None else refusal.reason,
            code=None if refusal is None else refusal.code,
            detail="" if refusal is None else refusal.detail,
        )

    def _respond(
        self, record: AuditRecord, *, audience: str, reply: msgspec.Struct | Refusal
    ) -> bytes:
        refusal = reply if isinstance(reply, Refusal) else None
        # Evidence carries the gate's internal claims; the caller already knows them.
        if refusal is not None:
            refusal = msgspec.structs.replace(refusal, evidence={})
        return seal_response(
            self.signer,
            Response(
                v=VERSION,
                issuer=self.signer.did,
                audience=audience,
                request_id=record.id,
                request_hash=record.request_hash,
                outcome=record.outcome,
                audit=record.ref,
                at_ms=record.at,
                result=b"" if refusal is not None else _encode(reply),
                refusal=refusal,
            ),
        )

    def _respond_plain(self, request_id: str, caller: str, now: int, refusal: Refusal) -> bytes:
        return seal_response(
            self.signer,
            Response(
                v=VERSION,
                issuer=self.signer.did,
                audience=caller,
                request_id=request_id,
                request_hash=b"",
                outcome="refused",
                audit=f"max://record/{request_id}",
                at_ms=now,
                refusal=refusal,
            ),
        )


def _attempt_id(request_id: str, digest: bytes) -> str:
    """Nats-Msg-Id for a non-final outcome: unique per attempt, so the final one is still stored."""
    return f"{request_id}.{digest[:8].hex()}"
