"""The public Python API: a running stack, reached as a caller of its gates.

    from maestro.client import Stack

    async with Stack.connect() as stack:             # the stack `maestro up` runs on .maestro
        run = await stack.run("examples/goal.yaml")  # plan, allocate, dispatch, wait
        print(run.state.status, run.workflow_id)

Every call is an envelope signed with the data dir's operator key and grant, answered by the
gate: checked and audited like any other caller's. A refusal raises `Refused` with the gate's
reason; reading a workflow verifies its journal (a forged message raises `Unreadable`).

An executor is a few decorated functions (maestro/executor.py):

    app = Executor("summarizer")

    @app.capability("summarize")
    async def summarize(ctx: Context) -> dict[str, str]:
        return {"summary": ctx.input("fetch")[:80]}

    async with Stack.connect() as stack:
        await app.run(stack)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as Nats

from envelope.client import Client
from envelope.local import LocalTrust, local_trust
from maestro.allocation import Allocated
from maestro.executor import Context, Executor, NonRetryable, Result
from maestro.gateway import PlanRef, PlanReply, PlanRequest
from maestro.goal import Goal, load_goal
from moon import replay
from moon.engine import follow_until_terminal
from moon.gateway import (
    CancelRequest,
    CompensateRequest,
    DispatchReply,
    DispatchRequest,
)
from moon.journal import journal
from moon.local import local_walls
from moon.workflow import WorkflowState
from streams.broker import connect, home_dir
from streams.config import space_from_env
from streams.moon_events import MoonEvent, StepSpec
from streams.replies import Refusal
from streams.subjects import Space

__all__ = ["Context", "Executor", "NonRetryable", "Refused", "Result", "Run", "Stack"]

T = TypeVar("T")


class Refused(Exception):
    """The gate (or the planner) said no: `refusal` holds the reason, code and detail."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.reason.value} ({refusal.code}): {refusal.detail}")
        self.refusal = refusal


@dataclass(frozen=True)
class Run:
    plan_id: str
    workflow_id: str
    plan: dict[str, Any]  # status, makespan, cost, steps, anticipation
    audit: str
    state: WorkflowState | None  # None when not waited for


@dataclass
class Stack:
    nc: Nats
    trust: LocalTrust
    space: Space
    client: Client
    data_dir: Path = field(default_factory=home_dir)  # its keys, credentials and nats.url
    url: str | None = None  # the broker, when not the one found through data_dir or NATS_URL

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, data_dir: Path | str | None = None, *, url: str | None = None,
                      timeout_s: float = 60.0) -> AsyncIterator[Stack]:
        """The stack on `data_dir` (default MAESTRO_HOME or .maestro), or at `url`/NATS_URL,
        as that data dir's operator."""
        home = Path(data_dir) if data_dir is not None else home_dir()
        trust = local_trust(home)
        space = space_from_env()
        async with connect(url, data_dir=home, name="maestro-client", role="operator") as nc:
            client = Client(nc, trust.operator, trust.services, grant=(trust.operator_grant,),
                            space=space, timeout_s=timeout_s)
            yield cls(nc, trust, space, client, data_dir=home, url=url)

    async def _call(self, target: str, body: Any, type_: type[T], **options: Any) -> T:
        reply = await self.client.call(target, body, **options)
        if isinstance(reply, Refusal):
            raise Refused(reply)
        return reply.result(type_)

    # --- MAESTRO ------------------------------------------------------------------------------

    async def plan(self, goal: Goal | Path | str, *, plan_id: str | None = None) -> PlanReply:
        return await self._call("maestro.plan", PlanRequest(goal=_goal(goal), plan_id=plan_id),
                                PlanReply)

    async def allocate(self, plan_id: str) -> Allocated:
        """Turn the plan into binding work orders and dispatch them through MOON's gate."""
        return await self._call("maestro.allocate", PlanRef(plan_id=plan_id), Allocated)

    async def run(self, goal: Goal | Path | str, *, wait: bool = True,
                  timeout_s: float = 600.0,
                  on_event: Callable[[MoonEvent], object] | None = None) -> Run:
        """Plan, allocate, dispatch and (by default) wait until the workflow ends; `on_event`
        sees each journaled event of the run as it happens."""
        planned = await self.plan(goal)
        allocated = await self.allocate(planned.plan_id)
        state = await self.wait(allocated.workflow_id, timeout_s=timeout_s,
                                on_event=on_event) if wait else None
        return Run(plan_id=planned.plan_id, workflow_id=allocated.workflow_id,
                   plan=msgspec.json.decode(planned.plan), audit=allocated.audit, state=state)

    # --- MOON ---------------------------------------------------------------------------------

    async def dispatch(self, steps: Sequence[StepSpec], *, workflow_id: str | None = None,
                       request_id: str | None = None) -> DispatchReply:
        """A DAG without planning: steps run as their `needs` complete."""
        return await self._call("moon.dispatch", DispatchRequest(
            steps=tuple(steps), workflow_id=workflow_id), DispatchReply, request_id=request_id)

    async def compensate(self, workflow_id: str, reason: str = "") -> DispatchReply:
        return await self._call("moon.compensate", CompensateRequest(
            workflow_id=workflow_id, reason=reason), DispatchReply, capability="moon:admin")

    async def cancel(self, workflow_id: str, reason: str = "") -> DispatchReply:
        return await self._call("moon.cancel", CancelRequest(
            workflow_id=workflow_id, reason=reason), DispatchReply)

    async def status(self, workflow_id: str, *, to_seq: int | None = None) -> WorkflowState:
        """The workflow's state: the fold of its verified journal (up to a stream sequence)."""
        loaded = await journal(self.nc.jetstream(), self.space,
                               local_walls(self.trust)).read(workflow_id, upto=to_seq)
        return replay.fold(item.value for item in loaded.items)

    async def wait(self, workflow_id: str, *, timeout_s: float = 600.0,
                   on_event: Callable[[MoonEvent], object] | None = None) -> WorkflowState:
        """Follow the journal until the workflow ends (`on_event`: each event as it is read)."""
        import asyncio  # noqa: PLC0415

        return await asyncio.wait_for(follow_until_terminal(
            self.nc.jetstream(), self.space, local_walls(self.trust), workflow_id,
            on_event=on_event), timeout_s)


def _goal(goal: Goal | Path | str) -> Goal:
    if isinstance(goal, Goal):
        return goal
    loaded = load_goal(goal)
    if isinstance(loaded, Refusal):
        raise Refused(loaded)
    return loaded
