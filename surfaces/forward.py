"""The one way every surface reaches the gate: sealed bytes on `map.<service>.<method>`.

A surface either forwards an envelope its caller sealed (HTTP, A2A from a partner) or seals one
as the caller its configuration names (MCP, A2A for the local organisation), then sends the
bytes exactly as the NATS client does and verifies the gate's signed answer. Nothing here checks
a signature of the request, a grant or a treaty: the gate does, and audits the outcome.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as Nats

from envelope.client import Client
from envelope.keys import KeyRing, Signer
from envelope.refusals import STATUS, problem
from envelope.seal import Header, Response, Signed, Wire, open_response
from streams.replies import Reason, Refusal
from streams.subjects import Space, map_request
from surfaces.routes import METHODS

__all__ = [
    "Answer", "Caller", "Gateway", "answer_body", "peek", "problem_body", "readable", "result_of",
    "status_of", "unpack",
]

_wire = msgspec.msgpack.Decoder(Wire)
_signed = msgspec.msgpack.Decoder(Signed)


@dataclass(frozen=True)
class Caller:
    """Who a surface seals as: a key and its grant chain (root first), maybe under a treaty."""

    signer: Signer
    grant: tuple[bytes, ...]
    treaty: bytes | None = None  # SignedTreaty bytes, for a call into another organisation


class Answer(msgspec.Struct, frozen=True):
    """What came back for one request: the verified response, or why there is none."""

    request_id: str
    response: Response | None = None  # verified: sealed by the service the request was for
    refusal: Refusal | None = None  # the gate's refusal, or one of the way there (unavailable)
    sealed: bytes = b""  # the gate's signed response bytes, as they arrived

    @property
    def audit(self) -> str:
        return "" if self.response is None else self.response.audit

    @property
    def accepted(self) -> bool:
        return self.refusal is None and self.response is not None


def unpack(data: bytes) -> tuple[Wire, Signed] | None:
    """What an envelope claims, unverified: to match the answer to the request and to show it.

    The gate verifies the same bytes; a surface never decides anything on what this returns.
    """
    try:
        wire = _wire.decode(data)
        return wire, _signed.decode(wire.payload)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None


def peek(data: bytes) -> Header | None:
    unpacked = unpack(data)
    return None if unpacked is None else unpacked[1].header


@dataclass
class Gateway:
    """An already-connected NATS client and what it takes to talk to the services' gates.

    `nc` may be role-authenticated (the `gateway` role: publish map.>, read the journals);
    `services` maps service name to the DID requests are sealed to and answers come from.
    """

    nc: Nats
    services: Mapping[str, str]
    space: Space = field(default_factory=Space)
    keys: KeyRing = field(default_factory=KeyRing)
    timeout_s: float = 60.0  # a plan is a CP-SAT solve: its limit, not a network round trip
    clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000

    def client(self, caller: Caller) -> Client:
        return Client(self.nc, caller.signer, self.services, grant=caller.grant,
                      treaty=caller.treaty, space=self.space, keys=self.keys,
                      clock=self.clock)  # fmt: skip

    def seal(self, caller: Caller, target: str, body: bytes, *, request_id: str | None = None,
             traceparent: str | None = None) -> tuple[str, bytes]:
        """(request id, envelope) for `target`, sealed for the capability its subject stands
        for."""
        capability = METHODS[target].capability if target in METHODS else None
        request_id, _, data = self.client(caller).seal(
            target, body, capability=capability, request_id=request_id, traceparent=traceparent)
        return request_id, data

    async def call(self, caller: Caller, target: str, body: bytes, *,
                   request_id: str | None = None) -> Answer:
        _, data = self.seal(caller, target, body, request_id=request_id)
        return await self.forward(target, data)

    async def forward(self, target: str, data: bytes, *, traceparent: str = "") -> Answer:
        """Send sealed bytes to the gate of `target` and verify what it answers."""
        service, name = target.split(".", 1)
        header = peek(data)
        request_id = header.request_id if header is not None else ""
        subject = self.space.subject(map_request(service, name))
        trace = traceparent or (header.traceparent if header is not None else "")
        try:
            msg = await self.nc.request(subject, data, timeout=self.timeout_s,
                                        headers={"traceparent": trace} if trace else None)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
            return Answer(request_id, refusal=Refusal(
                Reason.UNAVAILABLE, f"{subject}: {type(error).__name__}", retryable=True,
                retry_after_ms=1000))
        opened = open_response(
            msg.data, issuer=self.services[service], keys=self.keys,
            caller=header.caller if header is not None else "", request_id=request_id,
            request=data)
        if isinstance(opened, Refusal):  # not the gate's answer: never shown as one
            return Answer(request_id, refusal=Refusal(Reason.UNAVAILABLE,
                                                      f"unverifiable answer: {opened.detail}",
                                                      retryable=True))
        return Answer(opened.request_id or request_id, response=opened,
                      refusal=opened.refusal, sealed=msg.data)


# -- rendering: the gate's answer as JSON -----------------------------------------------------


def readable(value: Any) -> Any:
    """msgpack-decoded values as JSON: nested JSON documents (a plan, a folded state) inline,
    other bytes as base64."""
    match value:
        case bytes() if value[:1] in (b"{", b"["):
            try:
                return msgspec.json.decode(value)
            except msgspec.DecodeError:
                return base64.b64encode(value).decode()
        case bytes():
            return base64.b64encode(value).decode()
        case dict():
            return {str(k): readable(v) for k, v in value.items()}
        case list() | tuple():
            return [readable(v) for v in value]
        case _:
            return value


def result_of(answer: Answer) -> Any:
    assert answer.response is not None
    return readable(msgspec.msgpack.decode(answer.response.result))


def status_of(refusal: Refusal) -> int:
    return STATUS[refusal.reason]


def problem_body(refusal: Refusal, answer: Answer | None = None, *,
                 instance: str | None = None) -> dict[str, Any]:
    """RFC 9457 members from envelope/refusals.py, plus the audit ref and the signed answer."""
    audit = answer.audit if answer is not None else ""
    body: dict[str, Any] = msgspec.to_builtins(problem(refusal, instance=instance or audit or None))
    if audit:
        body["audit"] = audit
    if answer is not None and answer.sealed:
        body["response"] = base64.b64encode(answer.sealed).decode()
    return body


def answer_body(answer: Answer) -> dict[str, Any]:
    """The card's `{result, audit}`, with the request id and the gate's signed response."""
    assert answer.response is not None
    return {"result": result_of(answer), "audit": answer.audit, "request_id": answer.request_id,
            "outcome": answer.response.outcome,
            "response": base64.b64encode(answer.sealed).decode()}
