"""The OpenAPI 3.1 document of the HTTP surface, generated from the same Structs the gate reads."""

from __future__ import annotations

from typing import Any

import msgspec

from envelope.refusals import Problem
from moon.index import WorkflowSummary
from streams.audit import AuditRecord
from surfaces.routes import METHODS

__all__ = ["openapi"]

_REFUSALS = {
    "400": "Malformed request or envelope",
    "401": "Unknown key, bad signature, expired or not yet valid",
    "403": "Capability, audience, policy or treaty does not cover the call",
    "409": "Replayed request id or nonce, or a state conflict",
    "413": "Body over the limit (refused before it is read whole)",
    "422": "The body is not a valid request (cycle, invalid goal, …)",
    "429": "Treaty rate or budget exhausted; see Retry-After",
    "503": "The service is unavailable; see Retry-After",
}


def _components() -> dict[str, Any]:
    types: list[Any] = [Problem, WorkflowSummary, AuditRecord]
    types += [m.request for m in METHODS.values()] + [m.reply for m in METHODS.values()]
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}")
    from surfaces.http import JsonCall  # noqa: PLC0415 - http imports this module

    (_,), call = msgspec.json.schema_components(
        [JsonCall], ref_template="#/components/schemas/{name}")
    components.update(call)
    components["JsonCall"]["properties"]["body"] = {
        "description": "readable copy of the signed body; must equal it"}
    components["Answer"] = {
        "type": "object",
        "required": ["result", "audit", "request_id", "outcome", "response"],
        "properties": {
            "result": {"description": "the method's reply, as JSON"},
            "audit": {"type": "string", "pattern": "^max://record/"},
            "request_id": {"type": "string"},
            "outcome": {"type": "string", "enum": ["accepted"]},
            "response": {"type": "string", "contentEncoding": "base64",
                         "description": "the gate's signed response bytes"},
        },
    }
    return components


def _problems() -> dict[str, Any]:
    return {code: {"description": text, "content": {"application/problem+json": {
        "schema": {"$ref": "#/components/schemas/Problem"}}}} for code, text in _REFUSALS.items()}


def _protocol(target: str) -> dict[str, Any]:
    m = METHODS[target]
    return {"post": {
        "operationId": target.replace(".", "_"),
        "summary": m.summary,
        "description": f"Sealed for capability `{m.capability}`; the envelope's body is a "
                       f"`{m.request.__name__}` (msgpack), the answer's result a "
                       f"`{m.reply.__name__}`.",
        "x-maestro-capability": m.capability,
        "x-maestro-body": {"$ref": f"#/components/schemas/{m.request.__name__}"},
        "parameters": [{"name": "traceparent", "in": "header", "required": False,
                        "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JsonCall"}},
            "application/vnd.maestro.envelope.v1+msgpack": {
                "schema": {"type": "string", "contentMediaType":
                           "application/vnd.maestro.envelope.v1+msgpack"}},
        }},
        "responses": {"200": {"description": "accepted, with its audit record", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}}},
            **_problems()},
    }}  # fmt: skip


def _get(summary: str, schema: dict[str, Any], params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params, "responses": {
        "200": {"description": "ok", "content": {"application/json": {"schema": schema}}},
        "404": {"description": "unknown", "content": {"application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"}}}}}}}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}}


def openapi(base_url: str = "") -> dict[str, Any]:
    obj = {"type": "object"}
    paths: dict[str, Any] = {f"/v1/protocol/{t}": _protocol(t) for t in METHODS}
    paths |= {
        "/v1/workflows": _get("Workflows from the index", {"type": "array", "items": {
            "$ref": "#/components/schemas/WorkflowSummary"}}, [_query("status")]),
        "/v1/workflows/{workflow_id}": _get("A workflow folded from its journal", obj,
                                            [_path("workflow_id")]),
        "/v1/workflows/{workflow_id}/events": _get(
            "A workflow's journal", {"type": "array", "items": obj},
            [_path("workflow_id"), _query("after", "integer")]),
        "/v1/plans": _get("Plans on the PLANS journal", {"type": "array", "items": obj}, []),
        "/v1/plans/{plan_id}": _get("A plan folded from its journal", obj, [_path("plan_id")]),
        "/v1/plans/{plan_id}/events": _get("A plan's journal", {"type": "array", "items": obj},
                                           [_path("plan_id")]),
        "/v1/audit": _get("The tail of the audit stream", {"type": "array", "items": {
            "$ref": "#/components/schemas/AuditRecord"}},
            [_query("limit", "integer"), _query("service")]),
        "/v1/audit/{record_id}": _get("One audit record (max://record/<id>)", {
            "$ref": "#/components/schemas/AuditRecord"}, [_path("record_id")]),
    }  # fmt: skip
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "MAESTRO + MOON protocol (MAP over HTTP)", "version": "0.1.0",
                 "description": "Every call is a caller-sealed envelope checked, metered and "
                                "audited by the same gate as on NATS map.<service>.<method>."},
        "paths": paths,
        "components": {"schemas": _components()},
    }
    if base_url:
        document["servers"] = [{"url": base_url}]
    # Through JSON once: schema defaults such as () become the arrays a validator expects.
    return msgspec.json.decode(msgspec.json.encode(document))  # type: ignore[no-any-return]
