"""HTTP: `POST /v1/protocol/{service}.{method}` in front of the gate, plus read-only views.

Starlette on uvicorn: the MCP SDK's Streamable HTTP transport and the a2a-sdk's routes are both
Starlette applications, so one small ASGI framework serves all three surfaces on one port with
no second request model (the bodies are msgspec Structs; FastAPI would add pydantic on top).

Two request forms, both carrying an envelope the *caller* sealed (this server never signs for
anyone):

* `Content-Type: application/vnd.maestro.envelope.v1+msgpack`: the native envelope bytes, sent
  on to `map.<service>.<method>` exactly as they arrived.
* `Content-Type: application/json`: `{"envelope": "<base64 of the same bytes>"}` plus, if the
  caller wants them readable, any of `caller`, `capability`, `signature` ("ed25519:<hex>"),
  `trace`, `request_id` and `body`. The signature covers only the envelope: ed25519 over
  PAE("application/vnd.maestro.envelope.v1+msgpack", payload), payload = msgpack [header, body,
  grants, treaty], body = the exact msgpack bytes. The readable fields are not signed; each one
  present must equal what the envelope holds (the `body` compared as canonical JSON), otherwise
  the request is refused as malformed before it reaches the gate.

Answers: `200 {"result", "audit": "max://record/<id>", "request_id", "outcome", "response"}`
(`response` is the gate's signed answer, base64, for callers that verify it themselves), or an
RFC 9457 `application/problem+json` with the gate's stable code and the HTTP status of
envelope/refusals.py; `Accept: application/vnd.maestro.response.v1+msgpack` returns the gate's
signed bytes as they are. A body over the limit is refused (413) before it is read whole.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from envelope.seal import ENVELOPE_TYPE, RESPONSE_TYPE
from streams.replies import Reason, Refusal
from surfaces.forward import (
    Answer,
    Caller,
    Gateway,
    answer_body,
    problem_body,
    readable,
    status_of,
    unpack,
)
from surfaces.openapi import openapi
from surfaces.reads import Reads, as_json
from surfaces.routes import METHODS
from surfaces.ui import ui_routes

__all__ = ["DEFAULT_MAX_BODY", "JsonCall", "http_app", "http_routes", "json_call"]

DEFAULT_MAX_BODY = 96 * 1024  # the gate's 64 KiB envelope, base64 in a JSON form
PROBLEM = "application/problem+json"
_encode = msgspec.json.Encoder().encode
_canonical = msgspec.json.Encoder(order="sorted").encode


class JsonCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The card's JSON shape: the sealed envelope, and readable copies of what it says."""

    envelope: str  # base64 (standard or url-safe) of the native envelope bytes
    caller: str | None = None
    capability: str | None = None
    signature: str | None = None  # "ed25519:<hex of the 64 signature bytes>"
    trace: str | None = None  # the W3C traceparent the envelope carries
    request_id: str | None = None
    body: Any = None  # the body as JSON; the signed bytes are msgpack inside the envelope


_json_call = msgspec.json.Decoder(JsonCall)


def json_call(envelope: bytes, *, with_body: bool = True) -> dict[str, Any]:
    """The JSON form of a sealed envelope with its readable fields filled in (what a client
    sends); every readable field is a copy of what the envelope holds."""
    unpacked = unpack(envelope)
    assert unpacked is not None, "not a sealed envelope"
    wire, signed = unpacked
    header, sig = signed.header, wire.sig
    out: dict[str, Any] = {
        "envelope": base64.b64encode(envelope).decode(), "caller": header.caller,
        "capability": header.capability, "signature": f"ed25519:{sig.hex()}",
        "trace": header.traceparent, "request_id": header.request_id,
    }  # fmt: skip
    if with_body:
        out["body"] = readable(msgspec.msgpack.decode(bytes(signed.body)))
    return out


def _json(data: Any, status: int = 200, media_type: str = "application/json",
          headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(data), status_code=status, media_type=media_type, headers=headers)


def _problem(refusal: Refusal, answer: Answer | None = None, *, instance: str | None = None
             ) -> Response:
    headers = None
    if refusal.retry_after_ms is not None or status_of(refusal) in (429, 503):
        headers = {"Retry-After": str(max(1, math.ceil((refusal.retry_after_ms or 1000) / 1000)))}
    return _json(problem_body(refusal, answer, instance=instance), status_of(refusal), PROBLEM,
                 headers)


def _not_found(detail: str) -> Response:
    return _json({"type": "about:blank", "title": "Not Found", "status": 404, "detail": detail},
                 404, PROBLEM)


class _TooLarge(Exception):
    pass


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, or _TooLarge as soon as it is known to exceed `limit`: from Content-Length
    before reading anything, else after the first chunk past the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"{declared} bytes > {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _b64(text: str) -> bytes:
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded, validate=True)


def _from_json(data: bytes) -> bytes | Refusal:
    """The envelope bytes of a JSON call, or why the JSON does not describe them."""
    try:
        call = _json_call.decode(data)
        envelope = _b64(call.envelope)
    except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error, ValueError) as error:
        return Refusal(Reason.MALFORMED, f"JSON call: {error}")
    unpacked = unpack(envelope)
    if unpacked is None:
        return envelope  # not an envelope at all: the gate refuses it and audits that
    wire, signed = unpacked
    header, sig = signed.header, wire.sig
    claims = {"caller": header.caller, "capability": header.capability,
              "signature": f"ed25519:{sig.hex()}", "trace": header.traceparent,
              "request_id": header.request_id}  # fmt: skip
    for name, sealed in claims.items():
        shown = getattr(call, name)
        if shown is not None and shown != sealed:
            return Refusal(Reason.MALFORMED, f"{name} differs from the sealed envelope")
    if call.body is not None:
        try:
            body = readable(msgspec.msgpack.decode(bytes(signed.body)))
        except msgspec.DecodeError:
            return envelope  # the gate refuses the body it cannot read
        if _canonical(call.body) != _canonical(body):
            return Refusal(Reason.MALFORMED, "body differs from the sealed envelope")
    return envelope


def http_routes(gateway: Gateway, reads: Reads, *, max_body: int = DEFAULT_MAX_BODY,
                base_url: str = "", caller: Caller | None = None,
                ui_actions: bool = False) -> list[BaseRoute]:
    """The HTTP surface's routes, to mount beside MCP and A2A on one Starlette app; the web
    UI (surfaces/ui) under /ui, its actions sealed as `caller` when `ui_actions` is on."""

    async def protocol(request: Request) -> Response:
        target = request.path_params["target"]
        if target not in METHODS:
            return _not_found(f"no method {target}; see /openapi.json")
        try:
            data = await _read_limited(request, max_body)
        except _TooLarge as error:
            return _problem(Refusal(Reason.OVERSIZE, str(error)))
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media in ("application/json", "") or media.endswith("+json"):
            envelope = _from_json(data)
            if isinstance(envelope, Refusal):
                return _problem(envelope)
        elif media == ENVELOPE_TYPE.decode():
            envelope = data
        else:
            return _problem(Refusal(Reason.MALFORMED, f"unsupported media type {media}"))
        answer = await gateway.forward(target, envelope,
                                       traceparent=request.headers.get("traceparent", ""))
        if RESPONSE_TYPE.decode() in request.headers.get("accept", "") and answer.sealed:
            status = 200 if answer.refusal is None else status_of(answer.refusal)
            return Response(answer.sealed, status_code=status, media_type=RESPONSE_TYPE.decode())
        if answer.refusal is not None:
            return _problem(answer.refusal, answer)
        return _json(answer_body(answer))

    document = _encode(openapi(base_url))

    async def spec(request: Request) -> Response:
        return Response(document, media_type="application/json")

    return [
        Route("/v1/protocol/{target}", protocol, methods=["POST"]),
        *_read_routes(reads),
        Route("/openapi.json", spec, methods=["GET"]),
        *ui_routes(gateway, reads, caller=caller, actions=ui_actions),
    ]


def _read_routes(reads: Reads) -> list[BaseRoute]:
    async def workflows(request: Request) -> Response:
        found = await reads.workflows(status=request.query_params.get("status"))
        return _json([as_json(s) for s in found])

    async def workflow(request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        found = await reads.workflow(workflow_id)
        if found is None:
            return _problem(Refusal(Reason.UNKNOWN_WORKFLOW, workflow_id))
        version, state = found
        return _json({"workflow_id": workflow_id, "version": version, "status": state.status,
                      "state": as_json(state)})

    async def workflow_events(request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        after = int(request.query_params.get("after", "0") or 0)
        events = await reads.workflow_events(workflow_id, after=after)
        if not events and after == 0:
            return _problem(Refusal(Reason.UNKNOWN_WORKFLOW, workflow_id))
        return _json(events)

    async def plan_list(request: Request) -> Response:
        out = []
        for plan_id in await reads.plan_ids():
            found = await reads.plan(plan_id)
            if found is not None:
                out.append({"plan_id": plan_id, "status": found[1].status,
                            "workflow_id": found[1].workflow_id, "version": found[0]})
        return _json(out)

    async def plan(request: Request) -> Response:
        plan_id = request.path_params["plan_id"]
        found = await reads.plan(plan_id)
        if found is None:
            return _problem(Refusal(Reason.UNKNOWN_PLAN, plan_id))
        version, state = found
        shown = as_json(msgspec.structs.replace(state, seen=()))
        return _json({"plan_id": plan_id, "version": version, "status": state.status,
                      "state": shown})

    async def plan_events(request: Request) -> Response:
        plan_id = request.path_params["plan_id"]
        events = await reads.plan_events(plan_id)
        if not events:
            return _problem(Refusal(Reason.UNKNOWN_PLAN, plan_id))
        return _json(events)

    async def audit(request: Request) -> Response:
        limit = min(int(request.query_params.get("limit", "50") or 50), 1000)
        service = request.query_params.get("service", "*")
        return _json([as_json(r) | {"ref": r.ref}
                      for r in await reads.audit(limit=limit, service=service)])

    async def audit_record(request: Request) -> Response:
        record_id = request.path_params["record_id"]
        found = await reads.audit_record(record_id)
        if found is None:
            return _not_found(f"no audit record max://record/{record_id} in the recent window")
        return _json(as_json(found) | {"ref": found.ref})

    return [
        Route("/v1/workflows", workflows, methods=["GET"]),
        Route("/v1/workflows/{workflow_id}", workflow, methods=["GET"]),
        Route("/v1/workflows/{workflow_id}/events", workflow_events, methods=["GET"]),
        Route("/v1/plans", plan_list, methods=["GET"]),
        Route("/v1/plans/{plan_id}", plan, methods=["GET"]),
        Route("/v1/plans/{plan_id}/events", plan_events, methods=["GET"]),
        Route("/v1/audit", audit, methods=["GET"]),
        Route("/v1/audit/{record_id}", audit_record, methods=["GET"]),
    ]


def http_app(gateway: Gateway, reads: Reads, *, max_body: int = DEFAULT_MAX_BODY) -> Starlette:
    """The HTTP surface alone (tests, benchmarks); `serve_surfaces` mounts all three."""
    return Starlette(routes=http_routes(gateway, reads, max_body=max_body))
