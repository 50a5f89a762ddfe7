"""One dispatch through NATS, HTTP, MCP and A2A: four workflows and four audit records alike."""

from __future__ import annotations

import httpx
import msgspec
from mcp import Client as McpClient

from envelope.client import Client
from moon.gateway import DispatchReply
from surfaces.serve import surfaces_app

from .test_a2a import stream
from .world import free_port, serving, step, world

BODY = {"steps": [step("a"), step("b", ("a",)), step("c", ("a",))]}


async def test_the_same_dispatch_through_every_surface_is_the_same_call(nc, js, space, tmp_path):
    async with world(nc, space, tmp_path) as w:
        port = free_port()
        app = surfaces_app(nc, services=w.trust.services, caller=w.operator, space=space,
                           base_url=f"http://127.0.0.1:{port}")
        async with serving(app, port) as url:
            workflows: dict[str, str] = {}
            audits: dict[str, str] = {}
            # 1. native: the envelope client on map.moon.dispatch
            native = Client(nc, w.trust.operator, w.trust.services,
                            grant=(w.trust.operator_grant,), space=space)
            reply = await native.call("moon.dispatch", BODY)
            workflows["nats"] = reply.result(DispatchReply).workflow_id
            audits["nats"] = reply.audit
            # 2. HTTP, the JSON form
            _, sealed = w.gateway.seal(w.operator, "moon.dispatch", msgspec.msgpack.encode(BODY))
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                from surfaces.http import json_call  # noqa: PLC0415

                answer = (await http.post("/v1/protocol/moon.dispatch",
                                          json=json_call(sealed))).json()
            workflows["http"], audits["http"] = answer["result"]["workflow_id"], answer["audit"]
            # 3. MCP over Streamable HTTP
            async with McpClient(f"{url}/mcp") as mcp:
                called = (await mcp.call_tool("map.moon.dispatch", BODY)).structured_content
            workflows["mcp"], audits["mcp"] = called["result"]["workflow_id"], called["audit"]
            # 4. A2A, as the local agent (the server seals as its configured caller)
            states, artifacts, _ = await stream(url, {"skill": "dispatch", "intent": BODY})
            assert states[-1] == "TASK_STATE_COMPLETED"
            dispatched = artifacts["moon.dispatch"][0]["data"]
            workflows["a2a"] = dispatched["result"]["workflow_id"]
            audits["a2a"] = dispatched["audit"]

        assert len(set(workflows.values())) == 4  # four workflows, one per request id
        shapes = []
        for wf in workflows.values():
            final = await w.engine.wait_terminal(wf, 30)
            shapes.append((final.status, {k: (s.status, s.spec.needs, s.spec.capability)
                                          for k, s in final.steps.items()}))
        assert all(shape == shapes[0] for shape in shapes), shapes
        assert shapes[0][0] == "completed"

        records = [await w.reads.audit_record(ref.removeprefix("max://record/"))
                   for ref in audits.values()]
        alike = {(r.service, r.method, r.outcome, r.caller, r.caller_verified, r.capability,
                  r.reason) for r in records}
        assert alike == {("moon", "dispatch", "accepted", w.trust.operator.did, True,
                          "moon:dispatch", None)}
        assert len({r.id for r in records}) == len({r.request_hash for r in records}) == 4
