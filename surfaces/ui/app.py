"""The web UI's routes: pages under /ui, their JSON under /ui/api, live updates as server-sent
events from the journal, and the operator's actions through the gate.

The pages are one static shell (surfaces/ui/static, shipped in the package: no build step, no
network at run time) that fetches /ui/api/… and draws. Reads go through the verified stores of
surfaces/reads.py (surfaces/ui/cache.py). Actions are off unless the server was started with
them on (`maestro up --ui-actions`); then each one is sealed as the caller the server serves
as (the operator for `maestro up`) and sent to the service's gate like any other request, so
the caller's grant decides and the gate audits it. The browser holds no key.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import math
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from envelope.grants import Grant, SignedGrant, covers
from maestro.gantt_html import _FILLS as FILLS  # the plan page's colours, kept alike
from moon.gateway import CancelRequest, CompensateRequest, ForkRequest, capability_of
from streams.codec import Undecodable
from streams.ids import is_valid_id
from streams.jetstream_store import tail
from streams.moon_events import Decision
from streams.plan_events import PlanBatch
from streams.replies import Reason, Refusal
from surfaces.forward import Caller, Gateway, answer_body, problem_body, status_of
from surfaces.reads import Reads
from surfaces.ui.cache import AuditCache, IndexCache, JournalCache, PlanCache
from surfaces.ui.views import ListQuery, event_rows, list_page, plan_view, workflow_view

__all__ = ["ACTIONS", "STREAM_LIFETIME_S", "close_streams", "ui_routes"]

_encode = msgspec.json.Encoder().encode
STREAM_LIFETIME_S = 20.0  # an event stream ends by itself; the browser resumes from its last id
PING_S = 10.0
# action -> (gate target, capability its route checks, body)
ACTIONS: dict[str, tuple[str, str, type[msgspec.Struct]]] = {
    "compensate": ("moon.compensate", capability_of("compensate"), CompensateRequest),
    "cancel": ("moon.cancel", capability_of("cancel"), CancelRequest),
    "fork": ("moon.fork", capability_of("fork"), ForkRequest),
}
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def _assets() -> dict[str, tuple[bytes, str]]:
    """The shipped files, read once (works from a wheel as from a checkout)."""
    root = importlib.resources.files("surfaces.ui") / "static"
    out = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            data = entry.read_bytes()
            out[entry.name] = (data, hashlib.sha256(data).hexdigest()[:16])
    return out


def _json(data: Any, status: int = 200) -> Response:
    return Response(_encode(data), status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


def _problem(refusal: Refusal, answer: Any = None) -> Response:
    headers = {"Cache-Control": "no-store"}
    if refusal.retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, math.ceil(refusal.retry_after_ms / 1000)))
    return Response(_encode(problem_body(refusal, answer)), status_code=status_of(refusal),
                    media_type="application/problem+json", headers=headers)


def _int(value: str | None, default: int | None = None) -> int | None:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


class _Ui:
    def __init__(self, gateway: Gateway, reads: Reads, caller: Caller | None,
                 actions: bool) -> None:
        self.gateway, self.reads, self.caller = gateway, reads, caller
        self.actions = actions and caller is not None
        self.index = IndexCache(reads)
        self.journal = JournalCache(reads)
        self.plans = PlanCache(reads)
        self.audit = AuditCache(reads)
        self.assets = _assets()
        self.allowed = _covered(caller) if self.actions else []
        self.closing = asyncio.Event()  # set when the server stops: open streams end at once

    # -- pages and assets ------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        data, _ = self.assets["index.html"]
        return Response(data, media_type=_TYPES[".html"], headers={"Cache-Control": "no-cache"})

    async def asset(self, request: Request) -> Response:
        found = self.assets.get(request.path_params["name"])
        if found is None:
            return Response("not found", 404)
        data, etag = found
        if request.headers.get("if-none-match") == f'"{etag}"':
            return Response(status_code=304)
        name = request.path_params["name"]
        return Response(data, media_type=_TYPES["." + name.rsplit(".", 1)[-1]],
                        headers={"ETag": f'"{etag}"', "Cache-Control": "no-cache"})

    async def config(self, request: Request) -> Response:
        return _json({"actions": self.actions, "available": self.allowed,
                      "caller": self.caller.signer.did if self.caller else None,
                      "palette": list(FILLS),
                      "why": "" if self.actions else
                      "read-only: start the server with --ui-actions to enable actions"})

    # -- workflows ---------------------------------------------------------------------------

    async def workflows(self, request: Request) -> Response:
        p = request.query_params
        query = ListQuery(status=p.get("status") or None, plan=p.get("plan") or None,
                          q=p.get("q") or None, since=_int(p.get("since")),
                          until=_int(p.get("until")), page=_int(p.get("page"), 1) or 1,
                          per_page=_int(p.get("per_page"), 50) or 50)
        rows = await self.index.refresh()
        return _json(list_page(rows.values(), query) | {"cursor": self.index.cursor})

    async def _plan_for(self, plan_id: str | None) -> tuple[dict[str, Any] | None, list[str]]:
        if not plan_id or not is_valid_id(plan_id):
            return None, []
        ptail = await self.plans.load(plan_id)
        if not ptail.items:
            return None, []
        view = plan_view(plan_id, ptail.items)
        ids = [b.command_id for _, _, b in ptail.items if isinstance(b, PlanBatch)]
        return view, ids

    async def workflow(self, request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        if not is_valid_id(workflow_id):
            return _problem(Refusal(Reason.INVALID_ID, "workflow_id"))
        jtail, state = await self.journal.load(workflow_id)
        if not jtail.items and jtail.quarantined is None:
            return _problem(Refusal(Reason.UNKNOWN_WORKFLOW, workflow_id))
        items = [(seq, d) for seq, _, d in jtail.items]
        plan, plan_ids = await self._plan_for(state.plan_id)
        revisions: list[tuple[int, Any]] = []
        if plan is not None and plan["plan"] is not None:
            revisions = [(0, plan["plan"])] + [(r["revision"], r["plan"])
                                               for r in plan["revisions"] if r["plan"]]
        view = workflow_view(state, items, version=jtail.version, plans=revisions,
                             quarantined=jtail.quarantined)
        ids = [d.command.command_id for _, d in items] + plan_ids
        view["audit"] = await self.audit.records(ids)
        view["plan"] = None if plan is None else {
            "plan_id": plan["plan_id"], "status": plan["status"],
            "revisions": [{k: r[k] for k in ("seq", "revision", "why", "moved", "at_ms")}
                          for r in plan["revisions"]],
            "deadline_ms": (plan.get("goal") or {}).get("deadline_ms")}  # fmt: skip
        return _json(view)

    async def events(self, request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        if not is_valid_id(workflow_id):
            return _problem(Refusal(Reason.INVALID_ID, "workflow_id"))
        jtail, _ = await self.journal.load(workflow_id)
        after = _int(request.query_params.get("after"), 0) or 0
        limit = max(1, min(_int(request.query_params.get("limit"), 200) or 200, 5000))
        items = [(seq, d) for seq, _, d in jtail.items if seq > after]
        shown = items[-limit:] if request.query_params.get("last") else items[:limit]
        return _json({"total": len(jtail.items), "version": jtail.version,
                      "items": event_rows(shown)})

    async def stream(self, request: Request) -> Response:
        """The workflow's journal as it grows: one `journal` event per message, its stream
        sequence as the event id (a reconnecting browser resumes after it)."""
        workflow_id = request.path_params["workflow_id"]
        if not is_valid_id(workflow_id):
            return _problem(Refusal(Reason.INVALID_ID, "workflow_id"))
        after = _int(request.headers.get("last-event-id") or request.query_params.get("after"),
                     0) or 0
        store = self.reads.moon

        async def rows() -> AsyncIterator[Any]:
            async for item in store.subscribe(store.layout.filter(workflow_id),
                                              from_seq=after + 1):
                yield item

        def render(item: Any) -> str:
            if isinstance(item, Undecodable):
                return (f"event: quarantined\ndata: "
                        f"{_encode({'seq': item.seq, 'detail': item.error}).decode()}\n\n")
            decision: Decision = item.value
            row = event_rows([(item.seq, decision)])[0]
            return f"id: {item.seq}\nevent: journal\ndata: {_encode(row).decode()}\n\n"

        return _sse(rows(), render, self.closing)

    async def index_stream(self, request: Request) -> Response:
        """Index changes (a workflow's status moved), for the list to refresh itself."""
        after = _int(request.headers.get("last-event-id") or request.query_params.get("after"),
                     0) or 0

        async def rows() -> AsyncIterator[Any]:
            async for row in tail(self.reads.js, self.index.stream, self.index.subject,
                                  from_seq=after + 1):
                yield row

        def render(row: Any) -> str:
            seq, subject, _, _ = row
            key = subject.rsplit(".", 1)[-1]
            return f"id: {seq}\nevent: index\ndata: {_encode({'workflow_id': key}).decode()}\n\n"

        return _sse(rows(), render, self.closing)

    # -- plans -------------------------------------------------------------------------------

    async def plan_list(self, request: Request) -> Response:
        rows = await self.index.refresh()
        plans: dict[str, dict[str, Any]] = {}
        for r in rows.values():
            if r.get("plan_id"):
                plans.setdefault(r["plan_id"], {"plan_id": r["plan_id"], "workflows": []})[
                    "workflows"].append(r["workflow_id"])
        for plan_id in await self.reads.plan_ids():
            plans.setdefault(plan_id, {"plan_id": plan_id, "workflows": []})
        return _json(sorted(plans.values(), key=lambda p: p["plan_id"]))

    async def plan(self, request: Request) -> Response:
        plan_id = request.path_params["plan_id"]
        if not is_valid_id(plan_id):
            return _problem(Refusal(Reason.INVALID_ID, "plan_id"))
        view, ids = await self._plan_for(plan_id)
        if view is None:
            return _problem(Refusal(Reason.UNKNOWN_PLAN, plan_id))
        view["audit"] = await self.audit.records(ids)
        return _json(view)

    # -- actions -----------------------------------------------------------------------------

    async def action(self, request: Request) -> Response:
        """An operator's action on a workflow, sealed as the server's caller and sent to the
        gate: refused here when the UI is read-only (nothing reaches the gate), else the
        gate's own answer (its refusal when the caller's grant does not cover it)."""
        name, workflow_id = request.path_params["action"], request.path_params["workflow_id"]
        if name not in ACTIONS:
            return _problem(Refusal(Reason.MALFORMED, f"no action {name}"))
        if not self.actions or self.caller is None:
            return _problem(Refusal(Reason.POLICY_BLOCK, "the UI is read-only: start the "
                                    "server with --ui-actions to enable actions"))
        if refused := _same_origin(request):
            return _problem(refused)
        raw = await request.body()
        if len(raw) > 4096:
            return _problem(Refusal(Reason.OVERSIZE, f"{len(raw)} bytes > 4096"))
        try:
            given = msgspec.json.decode(raw) if raw else {}
        except msgspec.DecodeError as error:
            return _problem(Refusal(Reason.MALFORMED, f"JSON body: {error}"))
        if not isinstance(given, dict):
            return _problem(Refusal(Reason.MALFORMED, "the body is a JSON object"))
        target, capability, request_type = ACTIONS[name]
        try:
            body = msgspec.convert(given | {"workflow_id": workflow_id}, request_type)
        except msgspec.ValidationError as error:
            return _problem(Refusal(Reason.MALFORMED, str(error)))
        client = self.gateway.client(self.caller)
        traceparent = request.headers.get("traceparent")
        _, _, data = client.seal(target, msgspec.msgpack.encode(body), capability=capability,
                                 traceparent=traceparent)
        answer = await self.gateway.forward(target, data, traceparent=traceparent or "")
        if answer.refusal is not None or answer.response is None:
            return _problem(answer.refusal or Refusal(Reason.UNAVAILABLE, "no answer"), answer)
        return _json(answer_body(answer))


def _covered(caller: Caller | None) -> list[str]:
    """The actions the caller's grant names (read from its last grant, unverified: only to
    show the buttons it may press; the gate verifies the chain of every request)."""
    if caller is None or not caller.grant:
        return []
    try:
        leaf = msgspec.msgpack.decode(msgspec.msgpack.decode(caller.grant[-1], type=SignedGrant)
                                      .payload, type=Grant)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []
    return sorted(a for a, (_, capability, _) in ACTIONS.items()
                  if covers(leaf.capability, capability))


_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _same_origin(request: Request) -> Refusal | None:
    """A page of another origin cannot act through the operator's server: an action needs the
    UI's own header (which a cross-origin form cannot send), a Host that names this server (a
    rebound DNS name of another site does not) and, when the browser names an Origin, the
    Host's."""
    if request.headers.get("x-maestro-ui") != "1":
        return Refusal(Reason.POLICY_BLOCK, "an action comes from the UI (X-Maestro-UI: 1)")
    host = request.headers.get("host", "")
    named = urlsplit(f"//{host}").hostname or ""
    server = (request.scope.get("server") or ("",))[0]
    if named not in _LOOPBACK and named != server:
        return Refusal(Reason.POLICY_BLOCK, f"an action for host {host!r}, not this server")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != host:
        return Refusal(Reason.POLICY_BLOCK, f"cross-origin action from {origin}")
    return None


def _sse(rows: AsyncIterator[Any], render: Any, closing: asyncio.Event) -> StreamingResponse:
    """Server-sent events from `rows`, with comments to keep proxies open. uvicorn waits for
    open responses before it stops, so a stream ends when `closing` is set (close_streams)
    and, in any case, after STREAM_LIFETIME_S (EventSource reconnects with Last-Event-ID)."""

    async def body() -> AsyncIterator[str]:
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            async for row in rows:
                await queue.put(row)

        task = asyncio.ensure_future(pump())
        closed = asyncio.ensure_future(closing.wait())
        got: asyncio.Future[Any] | None = None
        try:
            yield "retry: 1000\n\n"
            ends = time.monotonic() + STREAM_LIFETIME_S
            while (left := ends - time.monotonic()) > 0 and not closing.is_set():
                got = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({got, closed}, timeout=min(left, PING_S),
                                             return_when=asyncio.FIRST_COMPLETED)
                if got not in done:
                    got.cancel()
                    if not closing.is_set():
                        yield ": ping\n\n"
                    continue
                text = render(got.result())
                yield text
                if text.startswith("event: quarantined"):
                    return
        finally:
            # Not awaited: unsubscribing the ordered consumer can take seconds, and nothing
            # here waits for it (the stream's end must not).
            task.cancel()
            closed.cancel()
            if got is not None:
                got.cancel()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def close_streams(app: Any) -> None:
    """End the UI's open event streams on `app` (a Starlette app or router whose routes came
    from ui_routes): call it before telling uvicorn to stop, which waits for them."""
    for route in getattr(app, "routes", ()):
        owner = getattr(getattr(route, "endpoint", None), "__self__", None)
        if isinstance(owner, _Ui):
            owner.closing.set()


def ui_routes(gateway: Gateway, reads: Reads, *, caller: Caller | None = None,
              actions: bool = False) -> list[BaseRoute]:
    """The UI's routes, to add beside the HTTP surface's (surfaces/http.py)."""
    ui = _Ui(gateway, reads, caller, actions)

    async def home(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    return [
        Route("/", home, methods=["GET"]),
        Route("/ui", home, methods=["GET"]),
        Route("/ui/", ui.page, methods=["GET"]),
        Route("/ui/workflows/{workflow_id}", ui.page, methods=["GET"]),
        Route("/ui/plans/{plan_id}", ui.page, methods=["GET"]),
        Route("/ui/static/{name}", ui.asset, methods=["GET"]),
        Route("/ui/api/config", ui.config, methods=["GET"]),
        Route("/ui/api/workflows", ui.workflows, methods=["GET"]),
        Route("/ui/api/stream", ui.index_stream, methods=["GET"]),
        Route("/ui/api/workflows/{workflow_id}", ui.workflow, methods=["GET"]),
        Route("/ui/api/workflows/{workflow_id}/events", ui.events, methods=["GET"]),
        Route("/ui/api/workflows/{workflow_id}/stream", ui.stream, methods=["GET"]),
        Route("/ui/api/workflows/{workflow_id}/actions/{action}", ui.action, methods=["POST"]),
        Route("/ui/api/plans", ui.plan_list, methods=["GET"]),
        Route("/ui/api/plans/{plan_id}", ui.plan, methods=["GET"]),
    ]
