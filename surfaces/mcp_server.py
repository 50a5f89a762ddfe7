"""MCP: the card's tools (`map.maestro.plan`, `map.moon.dispatch`, …) on the official `mcp` SDK.

The server holds one caller identity from its configuration (a key and its grant chain) and
seals every tool call as that caller, so each call passes the gate and leaves an audit record; a
call the grant does not cover comes back as the gate's refusal (an `isError` result carrying the
problem document). Tool input schemas are generated from the request Structs the gate decodes.

Long work is a task the client polls, not a blocking call: a method call still unanswered after
`inline_s` returns `{"task": {...}}` at once, and a dispatch or an allocation answers with the
workflow as a task. `map.tasks.get` answers with the Task shape of MCP 2025-11-25 (task_id,
status working|input_required|completed|failed|cancelled, status_message, poll_interval), since
the SDK ships the tasks types but no tasks methods; the shape lets clients move to the tasks
extension without changing what they read.

Served on stdio (`maestro-surfaces mcp`) and on Streamable HTTP (mounted at /mcp by
`serve_surfaces`).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types
import msgspec
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server
from starlette.applications import Starlette

from streams.replies import Reason, Refusal
from surfaces.forward import Answer, Caller, Gateway, answer_body, problem_body
from surfaces.reads import TERMINAL, Reads, as_json
from surfaces.routes import METHODS, Method, input_schema

__all__ = ["McpSurface", "client_config", "task_state"]

_OBJECT = {"type": "object", "additionalProperties": False}


def task_state(workflow_status: str) -> str:
    """A MOON workflow status as an MCP task status."""
    match workflow_status:
        case "completed":
            return "completed"
        case "failed" | "compensated":
            return "failed"
        case "cancelled":
            return "cancelled"
        case _:
            return "working"


def _schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {**_OBJECT, "properties": properties, "required": list(required)}


_STRING = {"type": "string"}
_INTROSPECTION: dict[str, tuple[str, dict[str, Any]]] = {
    "map.workflows.list": ("Workflows from the index, optionally of one status.",
                           _schema({"status": _STRING})),
    "map.workflows.get": ("A workflow folded from its journal.",
                          _schema({"workflow_id": _STRING}, ("workflow_id",))),
    "map.workflows.events": ("A workflow's journal: each decision and its events.",
                             _schema({"workflow_id": _STRING, "after": {"type": "integer"}},
                                     ("workflow_id",))),
    "map.plans.get": ("A plan folded from the PLANS journal.",
                      _schema({"plan_id": _STRING}, ("plan_id",))),
    "map.audit.tail": ("The last audit records, of one service or all.",
                       _schema({"limit": {"type": "integer"}, "service": _STRING})),
    "map.status": ("Workflow counts by status, and who this server calls as.", _schema({})),
    "map.tasks.get": ("Poll a task: a long method call (call:…) or a workflow (wf:…).",
                      _schema({"task_id": _STRING}, ("task_id",))),
}  # fmt: skip


def _result(data: dict[str, Any], *, error: bool = False) -> types.CallToolResult:
    text = msgspec.json.encode(data).decode()
    return types.CallToolResult(content=[types.TextContent(text=text)],
                                structured_content=data, is_error=error)


def _answered(answer: Answer) -> types.CallToolResult:
    if answer.refusal is not None:
        return _result(problem_body(answer.refusal, answer), error=True)
    return _result(answer_body(answer))


def _body(m: Method, arguments: dict[str, Any]) -> bytes:
    """The tool arguments as the msgpack body the gate decodes. Arguments that do not fit the
    request Struct go as they are: the gate refuses them as malformed, and audits that."""
    try:
        request = msgspec.json.decode(msgspec.json.encode(arguments), type=m.request)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return msgspec.msgpack.encode(arguments)
    return msgspec.msgpack.encode(request)


class McpSurface:
    """One MCP server: `server` for any transport, `run_stdio()`, `http_app()`."""

    def __init__(self, gateway: Gateway, reads: Reads, caller: Caller, *, inline_s: float = 5.0,
                 max_tasks: int = 1024, name: str = "maestro-moon") -> None:
        self.gateway, self.reads, self.caller = gateway, reads, caller
        self.inline_s = inline_s
        self._calls: OrderedDict[str, asyncio.Task[Answer]] = OrderedDict()
        self._max_tasks = max_tasks
        self._tools = self._list()
        self.server: Server[Any] = Server(
            name, version="0.1.0",
            instructions="MAESTRO plans, MOON runs durably. Every map.* tool is a signed call "
                         "through the gate; long calls and workflows are tasks: poll "
                         "map.tasks.get.",
            on_list_tools=self._on_list_tools, on_call_tool=self._on_call_tool,
        )  # fmt: skip
        self._introspect: dict[str, Callable[[dict[str, Any]], Awaitable[types.CallToolResult]]]
        self._introspect = {
            "map.workflows.list": self._workflows, "map.workflows.get": self._workflow,
            "map.workflows.events": self._events, "map.plans.get": self._plan,
            "map.audit.tail": self._audit, "map.status": self._status,
            "map.tasks.get": self._task,
        }  # fmt: skip

    # -- tools/list ----------------------------------------------------------------------------

    def _list(self) -> list[types.Tool]:
        tools = [types.Tool(name=f"map.{m.target}", description=f"{m.summary} (capability "
                            f"{m.capability}; signed and audited by the gate)",
                            input_schema=input_schema(m))
                 for m in METHODS.values()]  # fmt: skip
        tools += [types.Tool(name=name, description=text, input_schema=schema,
                             annotations=types.ToolAnnotations(read_only_hint=True))
                  for name, (text, schema) in _INTROSPECTION.items()]  # fmt: skip
        return tools

    async def _on_list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self._tools)

    # -- tools/call ----------------------------------------------------------------------------

    async def _on_call_tool(self, ctx: Any, params: types.CallToolRequestParams
                            ) -> types.CallToolResult:
        arguments = params.arguments or {}
        if (introspect := self._introspect.get(params.name)) is not None:
            return await introspect(arguments)
        target = params.name.removeprefix("map.")
        m = METHODS.get(target)
        if m is None or not params.name.startswith("map."):
            return _result({"title": "Unknown tool", "detail": params.name}, error=True)
        return await self.call(m, arguments)

    async def call(self, m: Method, arguments: dict[str, Any]) -> types.CallToolResult:
        """Seal as the configured caller, send, and answer now or hand back a task."""
        request_id, sealed = self.gateway.seal(self.caller, m.target, _body(m, arguments))
        task = asyncio.get_running_loop().create_task(self.gateway.forward(m.target, sealed))
        done, _ = await asyncio.wait({task}, timeout=self.inline_s)
        if not done:
            task_id = f"call:{request_id}"
            self._remember(task_id, task)
            return _result({"task": {"task_id": task_id, "status": "working",
                                     "status_message": f"{m.target} in progress",
                                     "poll_interval": 500}})  # fmt: skip
        answer = task.result()
        out = _answered(answer)
        workflow_id = self._workflow_of(answer)
        if workflow_id and not out.is_error:
            assert isinstance(out.structured_content, dict)
            out = _result(out.structured_content | {"task": {
                "task_id": f"wf:{workflow_id}", "status": "working", "poll_interval": 500,
                "status_message": f"workflow {workflow_id} dispatched"}})
        return out

    def _remember(self, task_id: str, task: asyncio.Task[Answer]) -> None:
        self._calls[task_id] = task
        while len(self._calls) > self._max_tasks:
            _, oldest = self._calls.popitem(last=False)
            if not oldest.done():
                oldest.cancel()

    @staticmethod
    def _workflow_of(answer: Answer) -> str:
        if answer.response is None or not answer.response.result:
            return ""
        result = msgspec.msgpack.decode(answer.response.result)
        return str(result.get("workflow_id", "")) if isinstance(result, dict) else ""

    # -- introspection (reads only: no gate, nothing decided) -----------------------------------

    async def _workflows(self, arguments: dict[str, Any]) -> types.CallToolResult:
        found = await self.reads.workflows(status=arguments.get("status"))
        return _result({"workflows": [as_json(s) for s in found]})

    async def _workflow(self, arguments: dict[str, Any]) -> types.CallToolResult:
        workflow_id = str(arguments.get("workflow_id", ""))
        found = await self.reads.workflow(workflow_id)
        if found is None:
            return _result(problem_body(Refusal(Reason.UNKNOWN_WORKFLOW, workflow_id)),
                           error=True)
        version, state = found
        return _result({"workflow_id": workflow_id, "version": version, "status": state.status,
                        "state": as_json(state)})

    async def _events(self, arguments: dict[str, Any]) -> types.CallToolResult:
        workflow_id = str(arguments.get("workflow_id", ""))
        after = int(arguments.get("after", 0) or 0)
        return _result({"events": await self.reads.workflow_events(workflow_id, after=after)})

    async def _plan(self, arguments: dict[str, Any]) -> types.CallToolResult:
        plan_id = str(arguments.get("plan_id", ""))
        found = await self.reads.plan(plan_id)
        if found is None:
            return _result(problem_body(Refusal(Reason.UNKNOWN_PLAN, plan_id)), error=True)
        version, state = found
        return _result({"plan_id": plan_id, "version": version, "status": state.status,
                        "state": as_json(msgspec.structs.replace(state, seen=()))})

    async def _audit(self, arguments: dict[str, Any]) -> types.CallToolResult:
        limit = min(int(arguments.get("limit", 20) or 20), 1000)
        records = await self.reads.audit(limit=limit, service=str(arguments.get("service", "*")))
        return _result({"records": [as_json(r) | {"ref": r.ref} for r in records]})

    async def _status(self, arguments: dict[str, Any]) -> types.CallToolResult:
        counts: dict[str, int] = {}
        for summary in await self.reads.workflows():
            counts[summary.status] = counts.get(summary.status, 0) + 1
        pending = sum(not t.done() for t in self._calls.values())
        return _result({"caller": self.caller.signer.did, "workflows": counts,
                        "calls_in_progress": pending})

    async def _task(self, arguments: dict[str, Any]) -> types.CallToolResult:
        task_id = str(arguments.get("task_id", ""))
        kind, _, key = task_id.partition(":")
        if kind == "call" and (call := self._calls.get(task_id)) is not None:
            if not call.done():
                return _result({"task_id": task_id, "status": "working", "poll_interval": 500})
            answer = call.result()
            shown = _answered(answer)
            status = "failed" if shown.is_error else "completed"
            return _result({"task_id": task_id, "status": status,
                            "result": shown.structured_content})
        if kind == "wf":
            summary = await self.reads.summary(key)
            if summary is not None:
                status = task_state(summary.status)
                return _result({"task_id": task_id, "status": status,
                                "status_message": f"workflow {summary.status}: "
                                                  f"{summary.completed}/{summary.steps} steps",
                                "poll_interval": None if summary.status in TERMINAL else 500,
                                "workflow": as_json(summary)})  # fmt: skip
        return _result({"title": "Unknown task", "detail": task_id}, error=True)

    # -- transports ----------------------------------------------------------------------------

    async def run_stdio(self) -> None:
        async with stdio_server() as (read, write):
            await self.server.run(read, write, self.server.create_initialization_options())

    def http_app(self, *, path: str = "/mcp", host: str = "127.0.0.1") -> Starlette:
        """Streamable HTTP at `path`; its lifespan runs the SDK's session manager. Stateless
        and JSON responses: every call is a complete request/reply, as the gate's are."""
        return self.server.streamable_http_app(streamable_http_path=path, json_response=True,
                                               stateless_http=True, host=host)


def client_config(command: str = "maestro-surfaces") -> dict[str, Any]:
    """The MCP client configuration entry for the stdio server (README)."""
    return {"mcpServers": {"maestro": {"command": command, "args": ["mcp"]}}}

