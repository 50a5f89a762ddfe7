"""The HTTP surface with a real uvicorn and a real HTTP client: every call through the one gate."""

from __future__ import annotations

import asyncio
import base64

import httpx
import msgspec
from openapi_spec_validator import validate

from envelope.seal import ENVELOPE_TYPE, RESPONSE_TYPE
from surfaces.forward import Gateway
from surfaces.http import http_app, json_call
from surfaces.reads import Reads

from .world import example_goal, goal_json, partner, restricted, serving, step, world

NATIVE = {"content-type": ENVELOPE_TYPE.decode()}


async def test_signed_plan_and_dispatch_are_accepted_audited_and_readable(nc, js, space,
                                                                          tmp_path):
    async with world(nc, space, tmp_path) as w, serving(http_app(w.gateway, w.reads)) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as http:
        plan_body = {"goal": goal_json(example_goal()), "plan_id": "brief"}
        _, sealed = w.gateway.seal(w.operator, "maestro.plan", msgspec.msgpack.encode(plan_body))
        planned = await http.post("/v1/protocol/maestro.plan", json=json_call(sealed))
        assert planned.status_code == 200, planned.text
        answer = planned.json()
        assert answer["result"]["decision"] == "planned"
        assert answer["result"]["plan"]["status"] in ("optimal", "feasible")
        assert answer["audit"] == f"max://record/{answer['request_id']}"

        _, sealed = w.gateway.seal(w.operator, "moon.dispatch", msgspec.msgpack.encode(
            {"steps": [step("a"), step("b", ("a",))]}))
        dispatched = await http.post("/v1/protocol/moon.dispatch", content=sealed,
                                     headers=NATIVE)
        assert dispatched.status_code == 200, dispatched.text
        workflow_id = dispatched.json()["result"]["workflow_id"]
        assert (await w.engine.wait_terminal(workflow_id, 30)).status == "completed"

        for answered in (answer, dispatched.json()):
            record = (await http.get(f"/v1/audit/{answered['request_id']}")).json()
            assert record["outcome"] == "accepted"
            assert record["caller"] == w.trust.operator.did and record["caller_verified"]
            assert record["ref"] == answered["audit"]
        shown = (await http.get(f"/v1/workflows/{workflow_id}")).json()
        assert shown["status"] == "completed"
        assert set(shown["state"]["steps"]) == {"a", "b"}
        events = (await http.get(f"/v1/workflows/{workflow_id}/events")).json()
        assert events[0]["command"] == "dispatch"
        assert workflow_id in {s["workflow_id"] for s in (await http.get("/v1/workflows")).json()}
        plans = (await http.get("/v1/plans")).json()
        assert {"plan_id": "brief", "status": "planned"}.items() <= plans[0].items()
        assert (await http.get("/v1/plans/brief")).json()["state"]["goal"]["name"] == \
            "weekly-market-brief"
        assert (await http.get("/v1/plans/brief/events")).json()[0]["events"][0]["type"] == \
            "maestro.plan.proposed"


async def test_the_same_request_id_twice_gets_the_first_answer(nc, js, space, tmp_path):
    async with world(nc, space, tmp_path) as w, serving(http_app(w.gateway, w.reads)) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as http:
        body = msgspec.msgpack.encode({"steps": [step("a")]})
        request_id, sealed = w.gateway.seal(w.operator, "moon.dispatch", body)
        first = await http.post("/v1/protocol/moon.dispatch", content=sealed, headers=NATIVE)
        again = await http.post("/v1/protocol/moon.dispatch", content=sealed, headers=NATIVE)
        # Sealed anew (fresh nonce, same request id): still the first answer, not a second run.
        _, resealed = w.gateway.seal(w.operator, "moon.dispatch", body, request_id=request_id)
        third = await http.post("/v1/protocol/moon.dispatch", json=json_call(resealed))
        assert first.status_code == again.status_code == third.status_code == 200
        assert first.json()["result"] == again.json()["result"] == third.json()["result"]
        assert first.json()["audit"] == again.json()["audit"] == third.json()["audit"]
        assert first.json()["response"] == again.json()["response"] == third.json()["response"]
        # The gate's signed bytes, for a caller that verifies the answer itself.
        raw = await http.post("/v1/protocol/moon.dispatch", content=sealed,
                              headers=NATIVE | {"accept": RESPONSE_TYPE.decode()})
        assert raw.content == base64.b64decode(first.json()["response"])
        records = [r for r in (await http.get("/v1/audit?limit=100")).json()
                   if r["id"] == request_id]
        assert [r["outcome"] for r in records] == ["accepted"]


async def _refusal(http: httpx.AsyncClient, target: str, **request) -> httpx.Response:
    answer = await http.post(f"/v1/protocol/{target}", **request)
    assert answer.headers["content-type"] == "application/problem+json", answer.text
    problem = answer.json()
    assert problem["status"] == answer.status_code
    assert problem["type"].endswith(problem["reason"])
    return answer


async def test_each_refusal_class_has_its_status_and_problem_body(nc, js, space, tmp_path):
    async with world(nc, space, tmp_path) as w, serving(http_app(w.gateway, w.reads)) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as http:
        dispatch = msgspec.msgpack.encode({"steps": [step("a")]})
        # 401: the signature does not hold (one flipped byte of the sealed bytes)
        _, sealed = w.gateway.seal(w.operator, "moon.dispatch", dispatch)
        forged = sealed[:-1] + bytes([sealed[-1] ^ 1])
        answer = await _refusal(http, "moon.dispatch", content=forged, headers=NATIVE)
        assert (answer.status_code, answer.json()["reason"]) == (401, "bad_signature")
        assert answer.json()["audit"].startswith("max://record/")  # audited, unattributed
        # 403: the grant covers moon:read, not moon:dispatch
        reader = restricted(w.trust, "moon:read")
        _, sealed = w.gateway.seal(reader, "moon.dispatch", dispatch)
        answer = await _refusal(http, "moon.dispatch", content=sealed, headers=NATIVE)
        assert (answer.status_code, answer.json()["reason"]) == (403, "no_capability")
        record = (await http.get(f"/v1/audit/{answer.json()['audit'].split('/')[-1]}")).json()
        assert record["caller"] == reader.signer.did and record["outcome"] == "refused"
        # 409: a request id another caller already used, on a route that claims its ids
        # before its handler runs (an idempotent one, like moon.dispatch, answers each
        # caller's request under its own name)
        replay = msgspec.msgpack.encode({"workflow_id": "w-none"})
        request_id, sealed = w.gateway.seal(w.operator, "moon.replay", replay)
        first = await http.post("/v1/protocol/moon.replay", content=sealed, headers=NATIVE)
        assert first.status_code != 409, first.text
        _, sealed = w.gateway.seal(reader, "moon.replay", replay, request_id=request_id)
        answer = await _refusal(http, "moon.replay", content=sealed, headers=NATIVE)
        assert (answer.status_code, answer.json()["reason"]) == (409, "replayed")
        # 413: over the gate's 64 KiB, refused by the gate (the surface's own limit is larger)
        _, sealed = w.gateway.seal(w.operator, "moon.dispatch", msgspec.msgpack.encode(
            {"steps": [step("a")], "intent": "x" * 70_000}))
        answer = await _refusal(http, "moon.dispatch", content=sealed, headers=NATIVE)
        assert (answer.status_code, answer.json()["reason"]) == (413, "oversize")
        # 422: a body the service refuses (a cycle)
        _, sealed = w.gateway.seal(w.operator, "moon.dispatch", msgspec.msgpack.encode(
            {"steps": [step("a", ("a",))]}))
        answer = await _refusal(http, "moon.dispatch", json=json_call(sealed))
        assert (answer.status_code, answer.json()["reason"]) == (422, "cycle")
        # 429 with Retry-After: a partner over its treaty's rate
        acme = partner(w.trust, rate_per_s=0.01, burst=1)
        _, sealed = w.gateway.seal(acme.caller(), "moon.dispatch", dispatch)
        assert (await http.post("/v1/protocol/moon.dispatch", content=sealed,
                                headers=NATIVE)).status_code == 200
        _, sealed = w.gateway.seal(acme.caller(), "moon.dispatch", dispatch)
        answer = await _refusal(http, "moon.dispatch", content=sealed, headers=NATIVE)
        assert (answer.status_code, answer.json()["reason"]) == (429, "rate_limited")
        assert int(answer.headers["retry-after"]) >= 1
        # 403 again for a partner without a treaty: its root is not ours
        _, sealed = w.gateway.seal(acme.caller(with_treaty=False), "moon.dispatch", dispatch)
        answer = await _refusal(http, "moon.dispatch", content=sealed, headers=NATIVE)
        assert answer.status_code in (401, 403)
        # 400: a readable field that is not what the envelope says
        _, sealed = w.gateway.seal(w.operator, "moon.dispatch", dispatch)
        shown = json_call(sealed) | {"capability": "moon:admin"}
        answer = await _refusal(http, "moon.dispatch", json=shown)
        assert (answer.status_code, answer.json()["reason"]) == (400, "malformed")
        shown = json_call(sealed) | {"body": {"steps": []}}
        assert (await _refusal(http, "moon.dispatch", json=shown)).status_code == 400


async def test_a_service_that_does_not_answer_is_503_with_retry_after(nc, js, space, tmp_path):
    from envelope.local import local_trust  # noqa: PLC0415
    from surfaces.forward import Caller  # noqa: PLC0415

    trust = local_trust(tmp_path)
    gateway = Gateway(nc, trust.services, space=space, timeout_s=1)
    async with serving(http_app(gateway, _reads(js, space))) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as http:
        _, sealed = gateway.seal(Caller(trust.operator, (trust.operator_grant,)),
                                 "moon.dispatch", msgspec.msgpack.encode({"steps": []}))
        answer = await _refusal(http, "moon.dispatch", content=sealed, headers=NATIVE)
        assert (answer.status_code, answer.json()["reason"]) == (503, "unavailable")
        assert answer.headers["retry-after"] == "1"
        unknown = await http.post("/v1/protocol/moon.nothing", content=sealed, headers=NATIVE)
        assert unknown.status_code == 404


async def _raw(port: int, head: bytes, body: bytes) -> bytes:
    """Send the head and part of a body, never the rest; the answer must come anyway."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


def _reads(js, space) -> Reads:  # type: ignore[no-untyped-def]
    return Reads(js, space, engines=frozenset(), planners=frozenset())


async def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(nc, js, space, tmp_path):
    from .world import free_port  # noqa: PLC0415

    gateway = Gateway(nc, {"moon": "did:key:z", "maestro": "did:key:z"}, space=space)
    port = free_port()
    async with serving(http_app(gateway, _reads(js, space), max_body=1024), port):
        # A declared length over the limit: refused on the headers, nothing read.
        head = (b"POST /v1/protocol/moon.dispatch HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/vnd.maestro.envelope.v1+msgpack\r\n"
                b"content-length: 100000000\r\n\r\n")
        answer = await _raw(port, head, b"x" * 100)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'"reason":"oversize"' in answer
        # No length (chunked): refused at the first chunk past the limit, the rest never sent.
        head = (b"POST /v1/protocol/moon.dispatch HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/vnd.maestro.envelope.v1+msgpack\r\n"
                b"transfer-encoding: chunked\r\n\r\n")
        chunk = b"800\r\n" + b"x" * 0x800 + b"\r\n"
        answer = await _raw(port, head, chunk)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


async def test_the_openapi_document_validates(nc, js, space, tmp_path):
    gateway = Gateway(nc, {}, space=space)
    async with serving(http_app(gateway, _reads(js, space))) as url, \
            httpx.AsyncClient(base_url=url) as http:
        document = (await http.get("/openapi.json")).json()
    validate(document)
    assert {f"/v1/protocol/{t}" for t in ("maestro.plan", "maestro.allocate", "maestro.replan",
                                          "moon.dispatch", "moon.checkpoint", "moon.compensate",
                                          "moon.replay")} <= set(document["paths"])
    dispatch = document["paths"]["/v1/protocol/moon.dispatch"]["post"]
    assert {"401", "403", "409", "413", "422", "429", "503"} <= set(dispatch["responses"])
