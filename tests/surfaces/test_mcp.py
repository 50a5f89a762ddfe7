"""The MCP surface with the official MCP client, over Streamable HTTP and over stdio."""

from __future__ import annotations

import asyncio
import os
import sys

import msgspec
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from surfaces.mcp_server import McpSurface

from .. import walls as tw
from .world import ROOT, example_goal, goal_json, restricted, serving, step, world

TOOLS = {"map.maestro.plan", "map.maestro.allocate", "map.maestro.replan", "map.moon.dispatch",
         "map.moon.checkpoint", "map.moon.compensate", "map.moon.replay"}


async def _follow(client: Client, task_id: str, timeout_s: float = 30) -> dict:
    """Poll map.tasks.get as a client would, until the task is no longer working."""
    async def poll() -> dict:
        while True:
            got = await client.call_tool("map.tasks.get", {"task_id": task_id})
            task = got.structured_content
            if task["status"] != "working":
                return task
            await asyncio.sleep(0.1)  # the client's poll interval, not a synchronisation

    return await asyncio.wait_for(poll(), timeout_s)


async def _exercise(client: Client, w, *, plan_id: str) -> None:
    listed = await client.list_tools()
    tools = {t.name: t for t in listed.tools}
    assert set(tools) >= TOOLS
    dispatch_schema = tools["map.moon.dispatch"].input_schema
    assert dispatch_schema["required"] == ["steps"]
    assert "StepSpec" in dispatch_schema["$defs"]
    assert tools["map.maestro.plan"].input_schema["properties"]["goal"]

    planned = await client.call_tool("map.maestro.plan",
                                     {"goal": goal_json(example_goal()), "plan_id": plan_id})
    assert not planned.is_error, planned.content
    body = planned.structured_content
    if "task" in body:  # the solve took longer than the inline wait
        body = (await _follow(client, body["task"]["task_id"]))["result"]
    assert body["result"]["decision"] == "planned"
    audit = body["audit"]

    dispatched = await client.call_tool("map.moon.dispatch",
                                        {"steps": [step("a"), step("b", ("a",))]})
    assert not dispatched.is_error, dispatched.content
    task = dispatched.structured_content["task"]
    assert task["task_id"].startswith("wf:")
    final = await _follow(client, task["task_id"])
    assert final["status"] == "completed", final
    workflow_id = dispatched.structured_content["result"]["workflow_id"]
    got = await client.call_tool("map.workflows.get", {"workflow_id": workflow_id})
    assert got.structured_content["status"] == "completed"
    events = await client.call_tool("map.workflows.events", {"workflow_id": workflow_id})
    assert events.structured_content["events"][0]["command"] == "dispatch"
    tail = await client.call_tool("map.audit.tail", {"limit": 50})
    refs = {r["ref"]: r for r in tail.structured_content["records"]}
    for ref in (audit, dispatched.structured_content["audit"]):
        assert refs[ref]["outcome"] == "accepted"
        assert refs[ref]["caller"] == w.trust.operator.did


async def test_mcp_over_streamable_http_plans_dispatches_and_follows(nc, js, space, tmp_path):
    async with world(nc, space, tmp_path) as w:
        surface = McpSurface(w.gateway, w.reads, w.operator, inline_s=0.05)
        async with serving(surface.http_app()) as url, Client(f"{url}/mcp") as client:
            await _exercise(client, w, plan_id="over-http")


async def test_mcp_refuses_a_capability_the_grant_lacks_with_the_gates_reason(nc, js, space,
                                                                              tmp_path):
    async with world(nc, space, tmp_path) as w:
        reader = restricted(w.trust, "moon:read")
        surface = McpSurface(w.gateway, w.reads, reader)
        async with serving(surface.http_app()) as url, Client(f"{url}/mcp") as client:
            refused = await client.call_tool("map.moon.dispatch", {"steps": [step("a")]})
            assert refused.is_error
            problem = refused.structured_content
            assert (problem["status"], problem["reason"]) == (403, "no_capability")
            record = await w.reads.audit_record(problem["audit"].removeprefix("max://record/"))
            assert record is not None and record.caller == reader.signer.did
            assert record.outcome == "refused"
            # Arguments that are no request at all still reach the gate, which says why.
            bad = await client.call_tool("map.moon.replay", {"workflow": 1})
            assert bad.is_error and bad.structured_content["reason"] == "malformed"
            assert bad.structured_content["audit"].startswith("max://record/")


async def test_mcp_over_stdio_plans_dispatches_and_follows(nc, js, space, nats_url, tmp_path):
    async with world(nc, space, tmp_path) as w:
        server = StdioServerParameters(
            command=sys.executable, args=["-m", "surfaces.serve", "mcp", "--data-dir",
                                          str(tw.home_for(space)), "--inline-s", "0.05"],
            env={**os.environ, "NATS_URL": nats_url, "MAESTRO_SPACE": space.prefix},
            cwd=str(ROOT))
        async with Client(server) as client:
            await _exercise(client, w, plan_id="over-stdio")


def test_tool_bodies_round_trip_through_the_request_structs():
    from surfaces.mcp_server import _body  # noqa: PLC0415
    from surfaces.routes import METHODS  # noqa: PLC0415

    body = _body(METHODS["moon.checkpoint"], {"workflow_id": "w", "step": "s", "attempt": 1,
                                               "state": "aGk="})
    assert msgspec.msgpack.decode(body)["state"] == b"hi"
