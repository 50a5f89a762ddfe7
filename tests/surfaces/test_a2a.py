"""The A2A surface with the a2a-sdk client: card, a goal planned and run, treaties at the gate."""

from __future__ import annotations

import uuid

import httpx
from a2a.client import ClientConfig, create_client
from a2a.helpers.proto_helpers import get_data_parts, new_data_part
from a2a.types.a2a_pb2 import Message, Role, SendMessageRequest, TaskState
from google.protobuf.json_format import MessageToDict

from surfaces.a2a_server import intent_part
from surfaces.serve import surfaces_app

from .world import example_goal, free_port, goal_json, partner, serving, step, world


def message(part: dict) -> SendMessageRequest:
    return SendMessageRequest(message=Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex,
                                              parts=[new_data_part(part)]))


async def stream(url: str, part: dict) -> tuple[list[str], dict[str, list], str]:
    """Send one message, read the stream to its end: (states seen, artifacts by name, task id)."""
    states: list[str] = []
    artifacts: dict[str, list] = {}
    task_id = ""
    async with httpx.AsyncClient(timeout=60) as http:
        client = await create_client(url, ClientConfig(streaming=True, httpx_client=http))
        async for event in client.send_message(message(part)):
            kind = event.WhichOneof("payload")
            if kind == "task":
                task_id = event.task.id
                states.append(TaskState.Name(event.task.status.state))
            elif kind == "status_update":
                task_id = event.status_update.task_id
                states.append(TaskState.Name(event.status_update.status.state))
                if event.status_update.status.state == TaskState.TASK_STATE_REJECTED:
                    parts = event.status_update.status.message.parts
                    artifacts["rejected"] = get_data_parts(parts)
            elif kind == "artifact_update":
                artifact = event.artifact_update.artifact
                artifacts.setdefault(artifact.name, []).extend(
                    MessageToDict(p) for p in artifact.parts)
        await client.close()
    return states, artifacts, task_id


def _app(w, port: int, caller=None):
    return surfaces_app(w.nc, services=w.trust.services, caller=caller, space=w.space,
                        base_url=f"http://127.0.0.1:{port}")


async def test_the_card_a_goal_planned_and_run_under_a_treaty_and_one_without(nc, js, space,
                                                                            tmp_path):
    async with world(nc, space, tmp_path) as w:
        port = free_port()
        async with serving(_app(w, port), port) as url:
            async with httpx.AsyncClient() as http:
                card = (await http.get(f"{url}/.well-known/agent-card.json")).json()
            assert {s["id"] for s in card["skills"]} == {"plan", "run", "dispatch"}
            assert card["capabilities"]["streaming"] is True
            assert card["supportedInterfaces"][0]["url"] == f"{url}/a2a"

            acme = partner(w.trust)
            body = {"goal": goal_json(example_goal()), "plan_id": "acme-brief"}
            part = intent_part(w.gateway, acme.caller(), "run", body)
            assert part["treaty"].startswith("moat://")
            states, artifacts, _ = await stream(url, part)
            assert states[-1] == "TASK_STATE_COMPLETED", (states, artifacts)
            assert "TASK_STATE_WORKING" in states
            plan = artifacts["maestro.plan"][0]["data"]
            assert plan["result"]["decision"] == "planned"
            assert plan["audit"].startswith("max://record/")
            workflow_id = artifacts["maestro.allocate"][0]["data"]["result"]["workflow_id"]
            assert {f"step:{s.id}" for s in example_goal().steps} <= set(artifacts)
            assert (await w.reads.workflow(workflow_id))[1].status == "completed"
            record = await w.reads.audit_record(plan["audit"].removeprefix("max://record/"))
            assert record.caller == acme.agent.did and record.outcome == "accepted"

            # The same partner without its treaty: its root is not ours, the gate refuses.
            part = intent_part(w.gateway, acme.caller(with_treaty=False), "plan",
                               {"goal": goal_json(example_goal()), "plan_id": "no-treaty"})
            states, artifacts, _ = await stream(url, part)
            assert states[-1] == "TASK_STATE_REJECTED", states
            problem = artifacts["rejected"][0]
            assert problem["status"] in (401, 403) and problem["audit"].startswith("max://")
            record = await w.reads.audit_record(problem["audit"].removeprefix("max://record/"))
            assert record.outcome == "refused" and record.reason.value == problem["reason"]

            # A treaty whose scope leaves out planning: outside the treaty, said by the gate.
            narrow = partner(w.trust, scope=("moon:read",))
            part = intent_part(w.gateway, narrow.caller(), "plan",
                               {"goal": goal_json(example_goal()), "plan_id": "narrow"})
            states, artifacts, _ = await stream(url, part)
            assert states[-1] == "TASK_STATE_REJECTED"
            assert artifacts["rejected"][0]["reason"] == "outside_treaty"


async def test_a_local_agent_dispatches_without_envelopes_and_gets_the_task(nc, js, space,
                                                                          tmp_path):
    async with world(nc, space, tmp_path) as w:
        port = free_port()
        async with serving(_app(w, port, caller=w.operator), port) as url:
            states, artifacts, task_id = await stream(url, {
                "skill": "dispatch", "intent": {"steps": [step("a"), step("b", ("a",))]}})
            assert states[-1] == "TASK_STATE_COMPLETED", (states, artifacts)
            assert set(artifacts) >= {"moon.dispatch", "step:a", "step:b"}
            async with httpx.AsyncClient(timeout=30) as http:
                client = await create_client(url, ClientConfig(streaming=False,
                                                               httpx_client=http))
                from a2a.types.a2a_pb2 import GetTaskRequest  # noqa: PLC0415

                task = await client.get_task(GetTaskRequest(id=task_id))
                assert task.status.state == TaskState.TASK_STATE_COMPLETED
                await client.close()


async def test_cancel_task_compensates_the_workflow_through_the_gate(nc, js, space, tmp_path):
    import asyncio  # noqa: PLC0415

    from a2a.types.a2a_pb2 import (  # noqa: PLC0415
        CancelTaskRequest,
        GetTaskRequest,
        SendMessageConfiguration,
    )

    async with world(nc, space, tmp_path) as w:
        port = free_port()
        held = {"id": "b", "capability": "nobody-serves-this", "needs": ["a"]}
        async with serving(_app(w, port, caller=w.operator), port) as url, \
                httpx.AsyncClient(timeout=30) as http:
            client = await create_client(url, ClientConfig(streaming=False, httpx_client=http))
            request = message({"skill": "dispatch", "intent": {"steps": [step("a"), held]}})
            request.configuration.CopyFrom(SendMessageConfiguration(return_immediately=True))
            task_id = ""
            async for event in client.send_message(request):
                task_id = event.task.id

            async def dispatched() -> None:
                while not any(a.name == "step:a" for a in (await client.get_task(  # noqa: ASYNC110
                        GetTaskRequest(id=task_id))).artifacts):
                    await asyncio.sleep(0.05)  # polling the task, as an A2A client does

            await asyncio.wait_for(dispatched(), 20)
            canceled = await client.cancel_task(CancelTaskRequest(id=task_id))
            assert canceled.status.state == TaskState.TASK_STATE_CANCELED
            await client.close()
        workflow_id = next(s.workflow_id for s in await w.reads.workflows())
        assert (await w.reads.workflow(workflow_id))[1].status in ("compensating", "compensated")
        compensations = [r for r in await w.reads.audit(limit=50) if r.method == "compensate"]
        assert [(r.outcome, r.caller) for r in compensations] == [("accepted",
                                                                  w.trust.operator.did)]
