"""A2A: an agent card and tasks (`a2a-sdk`) whose every step is a sealed call through the gate.

SendMessage carries one data part:

    {"skill": "run" | "plan" | "dispatch",
     "intent": <the body: {"goal": …, "plan_id": …} to plan or run, a DispatchRequest to dispatch>,
     "treaty": "moat://<hex of the treaty ref>"            (readable; must match the envelopes'),
     "envelopes": {"maestro.plan": "<base64>", "maestro.allocate": "<base64>",
                   "moon.dispatch": "<base64>", "moon.compensate": "<base64>"}}

A partner organisation seals its own envelopes (with its grant chain and the treaty) and the
server forwards them: the gate checks the treaty like any other call, and a call outside it makes
the task `rejected` with the gate's reasons. Without `envelopes`, the server seals as the caller
its configuration names (the local organisation's agent), if it has one. The task follows the
workflow's journal: submitted, working (status and step-result artifacts as they land),
input-required for a plan awaiting ratification, completed / failed / canceled, rejected for a
refusal. CancelTask compensates the workflow through the gate (`moon.compensate`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
from a2a.helpers.proto_helpers import (
    get_data_parts,
    new_data_part,
    new_task_from_user_message,
    new_text_part,
)
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes.agent_card_routes import create_agent_card_routes
from a2a.server.routes.jsonrpc_routes import create_jsonrpc_routes
from a2a.server.tasks.inmemory_task_store import InMemoryTaskStore
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Message,
    Part,
    Role,
    TaskState,
)
from a2a.utils.errors import TaskNotCancelableError
from starlette.routing import BaseRoute

from envelope.treaty import treaty_ref
from moon.state import apply, initial
from streams.codec import Undecodable
from streams.replies import Reason, Refusal
from surfaces.forward import Answer, Caller, Gateway, peek, problem_body, result_of
from surfaces.mcp_server import task_state
from surfaces.reads import TERMINAL, Reads

__all__ = ["A2aSurface", "Intent", "intent_part", "treaty_uri"]

SKILLS = (
    AgentSkill(id="plan", name="Plan a goal", tags=["maestro", "plan"],
               description="MAESTRO plans the goal (maestro.plan): dependency-aware, within "
                           "deadline and budget; the plan is the task's artifact.",
               examples=['{"skill": "plan", "intent": {"goal": {…}}}']),
    AgentSkill(id="run", name="Run a goal", tags=["maestro", "moon", "run"],
               description="Plan the goal, allocate it to executors and run it durably on MOON; "
                           "status and step results stream from the journal.",
               examples=['{"skill": "run", "intent": {"goal": {…}}, "treaty": "moat://…"}']),
    AgentSkill(id="dispatch", name="Dispatch a workflow", tags=["moon", "dispatch"],
               description="Dispatch a DAG of steps as a durable MOON workflow (moon.dispatch).",
               examples=['{"skill": "dispatch", "intent": {"steps": [{…}]}}']),
)  # fmt: skip
_STEPS = {"plan": ("maestro.plan",), "run": ("maestro.plan", "maestro.allocate"),
          "dispatch": ("moon.dispatch",)}


class Intent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The data part of a SendMessage."""

    skill: str = "run"
    intent: dict[str, Any] = {}
    treaty: str | None = None
    envelopes: dict[str, str] = {}


def treaty_uri(treaty: bytes) -> str:
    return f"moat://{treaty_ref(treaty).hex()}"


def intent_part(gateway: Gateway, caller: Caller, skill: str, body: dict[str, Any]
                ) -> dict[str, Any]:
    """What a partner puts in its message: the intent and the envelopes it sealed for it."""
    plan_id = body.get("plan_id")
    sealed = {}
    for target in _STEPS[skill]:
        step_body = {"plan_id": plan_id} if target == "maestro.allocate" else body
        sealed[target] = base64.b64encode(
            gateway.seal(caller, target, msgspec.msgpack.encode(step_body))[1]).decode()
    out = {"skill": skill, "intent": body, "envelopes": sealed}
    if caller.treaty is not None:
        out["treaty"] = treaty_uri(caller.treaty)
    return out


def _data(value: Any) -> Part:
    return new_data_part(msgspec.to_builtins(value))


def _message(context_id: str, task_id: str, *parts: Part) -> Message:
    return Message(role=Role.ROLE_AGENT, message_id=uuid.uuid4().hex, context_id=context_id,
                   task_id=task_id, parts=list(parts))


Say = Callable[..., Message]


class _Refused(Exception):
    def __init__(self, refusal: Refusal, answer: Answer | None = None) -> None:
        super().__init__(refusal.detail)
        self.refusal, self.answer = refusal, answer


class _Executor(AgentExecutor):
    def __init__(self, surface: A2aSurface) -> None:
        self.surface = surface
        self.workflows: dict[str, tuple[str, Intent]] = {}  # task id -> (workflow id, intent)

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None and context.task_id and context.context_id
        task_id, context_id = context.task_id, context.context_id
        if context.current_task is None:
            await event_queue.enqueue_event(new_task_from_user_message(context.message))
        updater = TaskUpdater(event_queue, task_id, context_id)
        say: Say = functools.partial(_message, context_id, task_id)
        try:
            intent = _intent(context.message)
            await updater.start_work(say(new_text_part(f"{intent.skill}: sealed, sending")))
            await self._run(intent, task_id, updater, say)
        except _Refused as refused:
            body = problem_body(refused.refusal, refused.answer)
            await updater.reject(say(new_text_part(f"{body['reason']}: {body['detail']}"),
                                     new_data_part(body)))

    async def _run(self, intent: Intent, task_id: str, updater: TaskUpdater, say: Say) -> None:
        gateway = self.surface.gateway
        answers: dict[str, Any] = {}
        for target in _STEPS.get(intent.skill, ()):
            answer = await gateway.forward(target, self.surface.envelope(intent, target))
            if answer.refusal is not None:
                raise _Refused(answer.refusal, answer)
            result = result_of(answer)
            answers[target] = result
            await updater.add_artifact([_data({"result": result, "audit": answer.audit})],
                                       name=target)
            if target == "maestro.plan" and result.get("decision") == "awaiting_ratification":
                await updater.requires_input(say(new_text_part(
                    f"plan {result['plan_id']} awaits ratification (maestro.ratify)")))
                return
        if intent.skill not in _STEPS:
            raise _Refused(Refusal(Reason.MALFORMED, f"no skill {intent.skill!r}"))
        if intent.skill == "plan":
            await updater.complete(say(new_text_part("planned")))
            return
        last = answers[_STEPS[intent.skill][-1]]
        workflow_id = str(last["workflow_id"])
        self.workflows[task_id] = (workflow_id, intent)
        await self._follow(workflow_id, updater, say)

    async def _follow(self, workflow_id: str, updater: TaskUpdater, say: Say) -> None:
        """Status and step results from the verified journal, as it grows, until it settles.
        (Not from the index: that is put when the summary changes, not per step.)"""
        journal = self.surface.reads.moon
        state = initial
        shown: set[str] = set()
        async for item in journal.subscribe(journal.layout.filter(workflow_id), from_seq=1):
            if isinstance(item, Undecodable):  # not the engine's: the workflow is quarantined
                await updater.failed(say(new_text_part(
                    f"workflow {workflow_id}: journal seq {item.seq} does not verify")))
                return
            state = apply(state, item.value)
            for step, s_ in state.steps.items():
                if s_.status == "completed" and step not in shown:
                    shown.add(step)
                    await updater.add_artifact([new_text_part((s_.result or b"").decode(
                        errors="replace"))], name=f"step:{step}")
            done = sum(s_.status == "completed" for s_ in state.steps.values())
            text = f"workflow {workflow_id} {state.status}: {done}/{len(state.steps)} steps"
            if state.status not in TERMINAL:
                await updater.update_status(TaskState.TASK_STATE_WORKING, say(new_text_part(
                    text)))
                continue
            match task_state(state.status):
                case "completed":
                    await updater.complete(say(new_text_part(text)))
                case "cancelled":
                    await updater.cancel(say(new_text_part(text)))
                case _:
                    await updater.failed(say(new_text_part(text)))
            return

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id and context.context_id
        known = self.workflows.get(context.task_id)
        if known is None:
            raise TaskNotCancelableError(message="no workflow to compensate for this task")
        workflow_id, intent = known
        try:
            envelope = self.surface.envelope(intent, "moon.compensate", {
                "workflow_id": workflow_id, "reason": "A2A CancelTask"})
        except _Refused as refused:
            raise TaskNotCancelableError(message=refused.refusal.detail) from None
        answer = await self.surface.gateway.forward("moon.compensate", envelope)
        if answer.refusal is not None:
            raise TaskNotCancelableError(message=f"{answer.refusal.reason.value}: "
                                                 f"{answer.refusal.detail}")
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel(_message(context.context_id, context.task_id, new_text_part(
            f"compensating {workflow_id} ({answer.audit})")))


def _intent(message: Message) -> Intent:
    parts = get_data_parts(message.parts)
    if not parts:
        raise _Refused(Refusal(Reason.MALFORMED, "no data part {intent, treaty}"))
    try:
        return msgspec.convert(parts[0], Intent, strict=False)
    except msgspec.ValidationError as error:
        raise _Refused(Refusal(Reason.MALFORMED, f"data part: {error}")) from None


def _whole(value: Any) -> Any:
    """protobuf Values carry every number as a double: give back the integers."""
    match value:
        case float() if value.is_integer():
            return int(value)
        case dict():
            return {k: _whole(v) for k, v in value.items()}
        case list():
            return [_whole(v) for v in value]
        case _:
            return value


class A2aSurface:
    """The agent card and the JSON-RPC binding, as Starlette routes to mount."""

    def __init__(self, gateway: Gateway, reads: Reads, caller: Caller | None, *,
                 url: str, rpc_path: str = "/a2a", name: str = "MAESTRO + MOON") -> None:
        self.gateway, self.reads, self.caller = gateway, reads, caller
        self.card = AgentCard(
            name=name, version="0.1.0",
            description="Plans goals (MAESTRO) and runs them as durable workflows (MOON). Every "
                        "call is a signed MAP envelope checked and audited by the gate; calls "
                        "across organisations need a MOAT treaty.",
            supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC",
                                                 protocol_version="1.0")],
            capabilities=AgentCapabilities(streaming=True),
            default_input_modes=["application/json"], default_output_modes=["application/json",
                                                                            "text/plain"],
            skills=list(SKILLS),
        )  # fmt: skip
        self.executor = _Executor(self)
        self.handler = DefaultRequestHandler(agent_executor=self.executor,
                                             task_store=InMemoryTaskStore(), agent_card=self.card)
        self._path = rpc_path

    def routes(self) -> list[BaseRoute]:
        return [*create_agent_card_routes(self.card),
                *create_jsonrpc_routes(self.handler, rpc_url=self._path)]

    def envelope(self, intent: Intent, target: str, body: dict[str, Any] | None = None) -> bytes:
        """The caller's sealed envelope for `target`, or one sealed as the configured caller;
        the readable treaty must name the treaty the envelope carries."""
        if target in intent.envelopes:
            try:
                data = base64.b64decode(intent.envelopes[target], validate=True)
            except (binascii.Error, ValueError) as error:
                raise _Refused(Refusal(Reason.MALFORMED, f"{target}: {error}")) from None
            header = peek(data)
            sealed_ref = header.treaty if header is not None else None
        elif self.caller is not None:
            step_body = body if body is not None else (
                {"plan_id": intent.intent.get("plan_id")} if target == "maestro.allocate"
                else _whole(intent.intent))
            _, data = self.gateway.seal(self.caller, target, msgspec.msgpack.encode(step_body))
            sealed_ref = treaty_ref(self.caller.treaty) if self.caller.treaty else None
        else:
            raise _Refused(Refusal(Reason.UNKNOWN_KEY,
                                   f"no envelope for {target} and no caller to seal as"))
        if intent.treaty is not None and (
                sealed_ref is None or intent.treaty != f"moat://{sealed_ref.hex()}"):
            raise _Refused(Refusal(Reason.OUTSIDE_TREATY,
                                   f"{target} is not sealed under {intent.treaty}"))
        return data
