"""The NATS shell around open_envelope: one handler per method, served on request/reply and intents.

The only envelope module with NATS, the clock, randomness and logs. Both paths (`map.<svc>.<m>`
request/reply and the durable `intent.<svc>.<m>` consumer) go through `answer()`, so a method
behaves the same whichever way a request arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, assert_never

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from envelope.audit import AuditLog, Unreadable
from envelope.budget import Ledger
from envelope.keys import Signer
from envelope.late_audit import LateAudit
from envelope.later import Journaling, collecting, journaling
from envelope.outcomes import OUTCOMES_BUCKET, Outcomes, Stored
from envelope.ownership import OWNERS, Ownership
from envelope.revocations import REVOKED_BUCKET, Revocations, Revoked
from envelope.seal import (
    VERSION,
    Opened,
    Response,
    Trust,
    check_envelope,
    request_hash,
    seal_response,
)
from envelope.shared import LIMITS, KvLimits, Limits, MemoryLimits, admit_shared, spends
from envelope.trace import is_valid_traceparent, trace_id
from envelope.treaty import TreatyLimiter
from streams import metrics, telemetry
from streams.audit import AuditRecord, Outcome, RequestEvidence
from streams.config import NONCES
from streams.ids import is_valid_id
from streams.replies import Reason, Refusal
from streams.subjects import Space, intent, map_request

ROOT_SPACE = Space()

__all__ = ["OUTCOMES_BUCKET", "Gate", "GateStopped", "Handler", "Stored", "wall_ms"]

Handler = Callable[[Opened], Awaitable[msgspec.Struct | Refusal]]
INTENTS_STREAM = "INTENTS"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class _Route(msgspec.Struct, frozen=True):
    method: str
    capability: str
    handler: Handler
    # The handler decides by the request id (a second run decides nothing): no claim before it,
    # its first answer kept with one write after it.
    idempotent: bool = False


_encode = msgspec.msgpack.encode
_MAX_DELIVERIES = 5
FETCH_PAUSE_S = 1.0  # after a fetch of intents failed for another reason than none waiting

# Refusals a caller can fix by waiting or re-sealing: not the request's final answer, so they are
# neither stored as its outcome nor deduplicated against a later successful attempt.
_TRANSIENT = frozenset(
    {Reason.RATE_LIMITED, Reason.EXPIRED, Reason.NOT_YET_VALID, Reason.REPLAYED, Reason.UNAVAILABLE}
)


class GateStopped(RuntimeError):
    """The gate's task ended, by itself, while its `serving` block ran."""


class Gate:
    """Put in front of a service's handlers; every request leaves exactly one audit record.

    gate = Gate(nc, service="moon", signer=moon_key, trust=trust, space=space,
                shared_limits=True)                # replicas share nonces, rates and budgets
    gate.route("dispatch", handle_dispatch)        # capability moon:dispatch
    async with gate.serving():                     # or: tasks.create_task(gate.run())
        ...

    The gate follows the revocation bucket itself (`revocations_live` for health): it is ready
    only once every revocation is loaded, and refuses everything (unavailable, audited) while the
    watch has been down longer than `revocation_grace_ms`. Handlers claim ids with `own()`.
    Limits are per process unless `shared_limits` (buckets envelope_nonces, envelope_limits).
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
        shared_limits: bool = False,
        limits: Limits | None = None,
        revocations: bool = True,
        revocation_grace_ms: int = 10_000,
        revocation_check_s: float = 5.0,
        revocations_bucket: str = REVOKED_BUCKET,
        nonces_bucket: str = NONCES.name,
        limits_bucket: str = LIMITS.name,
        owners_bucket: str = OWNERS.name,
        start_timeout_s: float = 30.0,
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
        self.space = space
        if limits is None:
            limits = (
                KvLimits(self.js, space=space, nonces_bucket=nonces_bucket,
                         limits_bucket=limits_bucket)
                if shared_limits else MemoryLimits(limiter=limiter, ledger=ledger)
            )
        self.limits = limits
        self.revocations = (
            Revocations(self.js, space=space, bucket=revocations_bucket,
                        check_every_s=revocation_check_s) if revocations else None
        )
        if self.revocations is not None:  # the set the watcher keeps, beside the static one
            trust = msgspec.structs.replace(
                trust, revoked=Revoked(trust.revoked, self.revocations.revoked))
        self.trust = trust
        self._grace_ms = revocation_grace_ms
        self._start_s = start_timeout_s
        self._down_since: int | None = None
        self.owners = Ownership(self.js, space=space, bucket=owners_bucket)
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
        self._outcomes: Outcomes | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._in_hand: set[asyncio.Task[None]] = set()
        self._finishing: set[asyncio.Task[None]] = set()  # effects left after their answer
        self._late = LateAudit(self.audit, self._log)  # records written after their answer

    def route(self, method: str, handler: Handler, *, capability: str | None = None,
              idempotent: bool = False) -> None:
        """Serve `method`; the subject stands for `capability` (default `<service>:<method>`).
        `idempotent`: the handler may run twice for one request id (a retry racing the first
        try) and decides nothing the second time, so the gate skips its claim."""
        self._routes[method] = _Route(method, capability or f"{self.service}:{method}", handler,
                                      idempotent)

    # -- serving --------------------------------------------------------------------------------

    @property
    def revocations_live(self) -> bool:
        """For health checks: the revocation set is current (always True when not watching)."""
        return self.revocations is None or self.revocations.live

    async def own(self, namespace: str, id_: object, caller: str, *,
                  claim: bool = True) -> Refusal | None:
        """A handler's ownership check (envelope/ownership.py): None when `caller` owns the id
        (claimed now if new and `claim`), else invalid_id / not_owner to return as the answer."""
        return await self.owners.own(namespace, id_, caller, claim=claim)

    async def handle(self, method: str, data: bytes,
                     headers: Mapping[str, str] | None = None) -> tuple[bytes, str]:
        """Answer one request to `method` in process (an edge that is not NATS, or a test that
        must pick the replica); the gate must be running. Returns (response, traceparent)."""
        if self._outcomes is None:
            raise RuntimeError("the gate is not running")
        return await self.answer(self._routes[method], self._outcomes, data, headers)

    async def run(self) -> None:
        """Serve every route on both paths until cancelled; requests in hand then finish."""
        outcomes = Outcomes(await self.js.key_value(self._bucket), lease_ms=self._lease_ms)
        self._outcomes = outcomes
        await self.limits.start(keep_ms=self.trust.max_ttl_ms + 2 * self.trust.skew_ms)
        await self.owners.start()
        subs = []
        try:
            async with asyncio.TaskGroup() as tasks:
                if self.revocations is not None:
                    # Before the first request: a revoked grant must not slip in at start-up.
                    tasks.create_task(self._watch_revocations(self.revocations))
                    try:
                        await asyncio.wait_for(self.revocations.wait_live(), self._start_s)
                    except TimeoutError:
                        raise RuntimeError("revocations not loaded: "
                                           f"{self.revocations.last_error}") from None
                for route in self._routes.values():
                    subs.append(
                        await self.nc.subscribe(
                            self.space.subject(map_request(self.service, route.method)),
                            queue=self.space.consumer(self.service),
                            cb=self._on_request(route, outcomes),
                        )
                    )
                pulls = [await self._pull(route) for route in self._routes.values()]
                await self.nc.flush()
                self.ready.set()
                for route, pull in zip(self._routes.values(), pulls, strict=True):
                    tasks.create_task(self._consume(route, outcomes, pull))
        finally:
            self.ready.clear()
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
            if self._in_hand:  # answered and audited, not cut off half way
                await asyncio.wait(set(self._in_hand), timeout=10)
            if self._finishing:
                await asyncio.wait(set(self._finishing), timeout=10)
            await self._late.stop()

    async def _watch_revocations(self, revocations: Revocations) -> None:
        """The watchdog runs for the gate's life; this notes when the set stopped being live."""
        follow = asyncio.get_running_loop().create_task(revocations.run())
        try:
            while True:
                await revocations.wait_down()
                self._down_since = self.clock()
                await revocations.wait_live()
                self._down_since = None
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Gate]:
        """Run the gate for the life of the block (tests, `… up`). A gate that stops serving
        ends the block with `GateStopped`: a process whose gate died must exit (and be
        restarted), not go on running where no request reaches it."""
        task = asyncio.get_running_loop().create_task(self.run())
        ready = asyncio.get_running_loop().create_task(self.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()  # re-raise why the gate could not start
        body = asyncio.current_task()
        cancelled_body = False

        def stopped(done: asyncio.Task[None]) -> None:
            nonlocal cancelled_body
            if body is not None and not done.cancelled():
                cancelled_body = True
                body.cancel("gate stopped")

        task.add_done_callback(stopped)
        try:
            yield self
        except asyncio.CancelledError:
            if not cancelled_body:
                raise
        finally:
            task.remove_done_callback(stopped)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if cancelled_body and body is not None:
            # Our cancel, not the caller's (also when the block ended before it landed): say
            # why instead.
            body.uncancel()
            error = task.exception()
            raise GateStopped(f"the {self.service} gate stopped: {error!r}") from error

    def _on_request(self, route: _Route, outcomes: Outcomes) -> Callable[[Msg], Awaitable[None]]:
        # nats-py runs a subscription's callbacks one after another: each request gets its own
        # task so that a slow handler (a journal append, a solve) does not hold up the rest.
        # The semaphore is the bound: when it is full the callback waits and the subscription's
        # pending buffer, then the server's slow-consumer limit, push back.
        async def serve(msg: Msg) -> None:
            try:
                response, trace = await self.answer(route, outcomes, msg.data, msg.headers)
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

    async def _pull(self, route: _Route) -> Any:
        """The route's durable pull consumer on the intents stream, made if missing."""
        return await self.js.pull_subscribe(
            self.space.subject(intent(self.service, route.method)),
            durable=self.space.consumer(f"{self.service}_{route.method}"),
            stream=self._stream,
        )

    async def _consume(self, route: _Route, outcomes: Outcomes, pull: Any) -> None:
        while True:
            try:
                msgs = await pull.fetch(batch=32, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                # nats-py raises either, depending on where in fetch the wait ran out (#418).
                continue
            except Exception as error:
                # The consumer is away (a cluster electing its leader, a reload, a reconnect)
                # or gone (deleted): the intents wait in the stream, so ask again later, on the
                # consumer made again if it went. Raised, this would end the gate while the
                # process went on running, unreachable.
                self._log.warning("intent_fetch_failed", method=route.method, error=repr(error))
                await asyncio.sleep(FETCH_PAUSE_S)
                with contextlib.suppress(Exception):  # still away: the next fetch says so
                    fresh = await self._pull(route)
                    with contextlib.suppress(Exception):
                        await pull.unsubscribe()
                    pull = fresh
                continue
            for msg in msgs:
                try:
                    await self._answer(route, outcomes, msg.data, msg.headers)
                except Exception:
                    # Broken infrastructure (or a bug): redeliver later, a few times, and then
                    # stop, so that one message can never stall or kill the consumer.
                    self._log.exception("intent_failed", method=route.method)
                    delivered = msg.metadata.num_delivered or 1
                    with contextlib.suppress(Exception):
                        await (msg.term() if delivered >= _MAX_DELIVERIES
                               else msg.nak(delay=min(30.0, 0.5 * 2**delivered)))
                    continue
                await msg.ack()  # after the outcome is stored: a crash before this redelivers

    # -- one request ----------------------------------------------------------------------------

    async def answer(
        self, route: _Route, outcomes: Outcomes, data: bytes, headers: Mapping[str, str] | None
    ) -> tuple[bytes, str]:
        """Open, dedupe, run, seal, store and audit one request; returns (response, traceparent)."""
        with metrics.labelled(metrics.GATE_SECONDS, self.service, route.method).time():
            try:
                return await self._answer(route, outcomes, data, headers)
            except Exception as error:
                return await self._failed(route, data, error), ""

    async def _failed(self, route: _Route, data: bytes, error: Exception) -> bytes:
        """Infrastructure broke mid-request: answer unavailable (retryable) and audit it, if the
        audit stream can still be reached; the caller's retry is the same request."""
        self._log.exception("request_failed", method=route.method)
        digest = request_hash(data)
        refusal = Refusal(Reason.UNAVAILABLE, f"{type(error).__name__}", retryable=True,
                          retry_after_ms=500)
        record = self._record(route, f"{digest.hex()}.failed", digest, "failed", self.clock(),
                              caller="", capability="", trace="", refusal=refusal)
        with contextlib.suppress(Exception):
            await self.audit.append(record, msg_id=record.id)
        return self._respond(record, audience="", reply=refusal)

    async def _answer(
        self, route: _Route, outcomes: Outcomes, data: bytes, headers: Mapping[str, str] | None
    ) -> tuple[bytes, str]:
        now = self.clock()
        opened = await self._open(route, data, now)
        header_trace = (headers or {}).get("traceparent", "")
        with structlog.contextvars.bound_contextvars(method=route.method):
            match opened:
                case Opened():
                    return await self._accepted(route, outcomes, opened, header_trace, now), (
                        opened.traceparent
                    )
                case Refusal():
                    trace = _valid_trace(opened.evidence.get("traceparent", ""))
                    return await self._refused(route, outcomes, data, opened, now), (
                        trace or _valid_trace(header_trace)
                    )

    async def _open(self, route: _Route, data: bytes, now: int) -> Opened | Refusal:
        pending = check_envelope(data, trust=self.trust, capability=route.capability, now_ms=now)
        if isinstance(pending, Refusal):
            return pending
        down = self._down_since
        if down is None and not self.revocations_live:
            down = now  # down before the task that notes it ran: count from now
        if down is not None and now - down >= self._grace_ms:
            # Fail closed: a revocation made while the watch is down would not be seen.
            return pending.refuse(Refusal(
                Reason.UNAVAILABLE, "revocation list is not current", retryable=True,
                retry_after_ms=1000))
        return await admit_shared(pending, self.limits, now, answers_replays=route.idempotent)

    async def _accepted(
        self, route: _Route, outcomes: Outcomes, opened: Opened, header_trace: str, now: int
    ) -> bytes:
        log = self._log.bind(
            trace=opened.traceparent, request_id=opened.request_id, caller=opened.caller
        )
        if header_trace and (
            not is_valid_traceparent(header_trace)
            or trace_id(header_trace) != trace_id(opened.traceparent)
        ):
            log.info("trace_header_differs", header=header_trace)  # infra may re-parent: no refusal
        earlier = None if route.idempotent else await outcomes.claim(
            opened.request_id, opened.caller, now)
        if isinstance(earlier, bytes):
            log.info("replayed", outcome="stored")
            self._count(route, "replayed", None)
            return earlier
        if isinstance(earlier, Refusal):
            return await self._not_first(route, opened, earlier, now, log)
        outcome: Outcome
        later: list[asyncio.Future[None]] = []
        # An idempotent handler may journal the request's audit evidence with its command
        # (later.py): then the answer waits for that one write and the record follows it.
        journal: Journaling | None = None
        offered = _evidence(route, opened, now) if self._late.has_room() else None
        try:
            # Bound in contextvars so the handler's own log lines carry the trace too. An
            # idempotent handler may leave its effects to finish beside the answer (later.py).
            with structlog.contextvars.bound_contextvars(
                trace=opened.traceparent, request_id=opened.request_id, caller=opened.caller
            ), telemetry.serving(self.service, route.method, opened.request_id,
                                 opened.traceparent, opened.caller) as span, (
                collecting() if route.idempotent else contextlib.nullcontext(later)
            ) as later, (
                contextlib.nullcontext(None) if offered is None else journaling(offered)
            ) as journal:
                reply = await route.handler(opened)
        except Exception as error:
            log.exception("handler_failed")
            reply = Refusal(Reason.UNAVAILABLE, f"{type(error).__name__}: {error}", retryable=True)
            outcome = "failed"
            await asyncio.gather(*later, return_exceptions=True)  # nothing left running
            later = []
        else:
            outcome = "refused" if isinstance(reply, Refusal) else "accepted"
        release = _from_journal(journal, outcome)
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
            audited = self.audit.append(record, msg_id=_attempt_id(record.id, opened.request_hash))
            if route.idempotent:
                await audited
            else:
                await asyncio.gather(outcomes.release(opened.request_id), audited)
        elif route.idempotent:
            # What the handler left running (its work orders) is not waited for: the answer
            # says the request is durably accepted, which its journal append made true, and an
            # effect lost to a crash is found the way one lost after the answer always was (a
            # step's timeout).
            self._finish_beside(later)
            first = await self._keep_first(outcomes, opened, now, record, response,
                                           release=release)
            if isinstance(first, bytes):
                log.info("replayed", outcome="stored")
                self._count(route, "replayed", None)
                return first
            if isinstance(first, Refusal):
                return await self._not_first(route, opened, first, now, log)
        else:
            await asyncio.gather(outcomes.finish(opened.request_id, opened.caller, now, response),
                                 self.audit.append(record, msg_id=_final_id(record)))
        if outcome != "failed":  # the request's final answer: its span ends with it
            span.end(attributes={"envelope.outcome": outcome,
                                 "envelope.reason": record.reason.value if record.reason else ""})
        log.info("answered", outcome=outcome, reason=record.reason)
        self._count(route, outcome, record.reason)
        return response

    async def _keep_first(self, outcomes: Outcomes, opened: Opened, now: int,
                          record: AuditRecord, response: bytes, *,
                          release: Callable[[], None] | None) -> bytes | Refusal | None:
        """Keep an idempotent route's first answer: None when this one is it, else the first
        (bytes), or a refusal when the record found is not this caller's. The answer rides in
        its audit record (`_final_id`): one write for both, and a second run's record is the
        first one, which the stream's deduplication hands back (envelope/audit.py) for as long
        as any envelope can live and longer (a retry later still decides nothing: the handler
        decides by the request id, and answers from the journal). A request that spends (a
        treaty's rate, a budget) has its nonce stored, so the same bytes again are refused as
        a replay before the handler and answered from the outcome store: kept there too.
        With `release`, the journal holds the request's evidence and this handling's append was
        its first: the answer is durable, and so is its record, written beside and after it."""
        kept = msgspec.structs.replace(record, answer=response)
        msg_id = _final_id(record)
        if release is not None:
            self._late.write(kept, msg_id=msg_id,
                             beside_id=_attempt_id(record.id, record.request_hash),
                             release=release)
            return None
        if spends(opened):
            first, _ = await asyncio.gather(
                outcomes.keep(opened.request_id, opened.caller, now, response),
                self.audit.append(kept, msg_id=msg_id))
            return first
        match await self.audit.first(kept, msg_id=msg_id):
            case None:
                return None
            case Unreadable() as unreadable:
                self._log.warning("first_answer_unreadable", request_id=opened.request_id,
                                  seq=unreadable.seq, detail=unreadable.detail)
                return Refusal(Reason.REPLAYED, "request id holds an outcome the gate cannot read")
            case AuditRecord(caller=caller) if caller != opened.caller:
                return Refusal(Reason.REPLAYED, "request id already used by another caller")
            case AuditRecord(answer=answer) if answer:
                return answer
            case AuditRecord():  # only a record this gate did not write holds no answer
                return Refusal(Reason.REPLAYED, "request id holds an outcome the gate cannot read")
            case unexpected:
                assert_never(unexpected)

    async def audit_journaled(self, request_id: str, caller: str, evidence: RequestEvidence,
                              reply: msgspec.Struct) -> bool:
        """Write again, from a journaled command, the accepted record of a request answered
        before its record was stored (a crash may have kept it from AUDIT): the same record
        and answer byte for byte (sealing is deterministic), a duplicate AUDIT drops when the
        first write made it. True when this write stored it."""
        route = self._routes.get(evidence.method)
        if route is None:
            raise ValueError(f"{self.service}.{evidence.method}: no such route")
        record = self._record(route, request_id, evidence.request_hash, "accepted",
                              evidence.at_ms, caller=caller, capability=evidence.capability,
                              trace=evidence.traceparent, refusal=None)
        response = self._respond(record, audience=caller, reply=reply)
        first = await self.audit.first(msgspec.structs.replace(record, answer=response),
                                       msg_id=_final_id(record))
        return first is None

    def _finish_beside(self, later: list[asyncio.Future[None]]) -> None:
        """Let a handler's effects finish after its answer leaves; a failure is logged (the
        effect's own recovery, not the caller's retry, settles it)."""
        if not later:
            return

        async def finish() -> None:
            for result in await asyncio.gather(*later, return_exceptions=True):
                if isinstance(result, Exception):
                    self._log.warning("effect_failed", error=repr(result))

        task = asyncio.get_running_loop().create_task(finish())
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _not_first(self, route: _Route, opened: Opened, refusal: Refusal, now: int,
                         log: Any) -> bytes:
        """Not this request's final answer (the id's first outcome is): audited per attempt."""
        attempt = _attempt_id(opened.request_id, opened.request_hash)
        record = self._record(route, attempt, opened.request_hash, "refused", now,
                              caller=opened.caller, capability=opened.header.capability,
                              trace=opened.traceparent, refusal=refusal)
        await self.audit.append(record, msg_id=attempt)
        log.info("refused", reason=refusal.reason.value, detail=refusal.detail)
        self._count(route, "refused", refusal.reason)
        return self._respond(record, audience=opened.caller, reply=refusal)

    def _count(self, route: _Route, outcome: str, reason: Reason | None) -> None:
        metrics.labelled(
            metrics.GATE_REQUESTS, self.service, route.method, outcome,
            "" if reason is None else reason.value,
        ).inc()

    async def _refused(
        self, route: _Route, outcomes: Outcomes, data: bytes, refusal: Refusal, now: int
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
        request_id = refusal.evidence.get("request_id", "")
        trace = _valid_trace(refusal.evidence.get("traceparent", ""))
        capability = refusal.evidence.get("capability", "")
        if not is_valid_id(request_id):
            # Signed, so the caller is named, but the id cannot be a KV key or a Nats-Msg-Id:
            # audited under the request's hash (the same bytes again dedupe to one record) and
            # never stored as an outcome.
            record = self._record(route, digest.hex(), digest, "refused", now, caller=caller,
                                  capability=capability, trace=trace, refusal=refusal)
            await self.audit.append(record, msg_id=record.id)
            self._log.info("refused", reason=refusal.reason.value, caller=caller)
            self._count(route, "refused", refusal.reason)
            return self._respond(record, audience=caller, reply=refusal)
        log = self._log.bind(trace=trace, request_id=request_id, caller=caller)
        if refusal.reason is Reason.REPLAYED:
            earlier = await outcomes.stored(request_id, caller)
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
            capability=capability,
            trace=trace,
            refusal=refusal,
        )
        response = self._respond(record, audience=caller, reply=refusal)
        if refusal.reason in _TRANSIENT:
            await self.audit.append(record, msg_id=_attempt_id(request_id, digest))
        else:
            await outcomes.settle(request_id, caller, now, response)
            if route.idempotent:  # where a later try of the id finds it (_keep_first)
                record = msgspec.structs.replace(record, answer=response)
            await self.audit.append(record, msg_id=_final_id(record))
        log.info("refused", reason=refusal.reason.value)
        self._count(route, "refused", refusal.reason)
        return response

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


def _from_journal(journal: Journaling | None, outcome: Outcome) -> Callable[[], None] | None:
    """The release of an accepted request whose journal append holds its evidence, else None
    (released now: its record is written before its answer, or by its retry)."""
    release = None if journal is None else journal.release
    if release is not None and outcome != "accepted":
        release()
        return None
    return release


def _evidence(route: _Route, opened: Opened, now: int) -> RequestEvidence | None:
    """What an idempotent handler may journal so that its answer needs no write after it (not
    for a request that spends: its answer is stored for its replays before it leaves)."""
    if not route.idempotent or spends(opened):
        return None
    return RequestEvidence(method=route.method, request_hash=opened.request_hash,
                           capability=opened.header.capability,
                           traceparent=opened.traceparent, at_ms=now)


def _valid_trace(traceparent: str) -> str:
    """A traceparent fit for a NATS header and an audit record, or ""."""
    return traceparent if is_valid_traceparent(traceparent) else ""


def _final_id(record: AuditRecord) -> str:
    """Nats-Msg-Id of a request's final record. AUDIT deduplicates by this id, and a request
    id is its caller's to choose, so the id names the service, the method and the caller's
    tag beside it: another caller's request under the same id, the same caller's on another
    method (which an idempotent route does not claim in the outcome store), or any other
    record (no other record id holds a ':', which no request id may) is never taken for this
    one. A collision would drop the record of a request that ran, or hand it another's
    answer."""
    tag = hashlib.sha256(record.caller.encode()).hexdigest()[:16]
    return f"{record.service}.{record.method}:{record.id}:{tag}"


def _attempt_id(request_id: str, digest: bytes) -> str:
    """Nats-Msg-Id for a non-final outcome: unique per attempt, so the final one is still stored."""
    return f"{request_id}.{digest[:8].hex()}"
