"""The methods the surfaces expose: the card's table of `service.method`, capability and body.

This is the published contract (seeds/MAESTRO.txt, MOON.txt), not a second copy of the checks:
the gate still decides whether a capability covers a call. The surfaces need it to name tools,
to seal a body for the capability the subject stands for, and to generate JSON Schemas.
"""

from __future__ import annotations

from typing import Any

import msgspec

from maestro.gateway import PlanRef, PlanReply, PlanRequest, ReplanRequest, StateReply
from maestro.service import Allocated
from moon.gateway import (
    CheckpointRequest,
    CompensateRequest,
    DispatchReply,
    DispatchRequest,
    ReplayReply,
    ReplayRequest,
    capability_of,
)

__all__ = ["METHODS", "Method", "input_schema", "method"]


class Method(msgspec.Struct, frozen=True):
    target: str  # service.method, as in `map.<service>.<method>`
    capability: str  # what the gate's subject for it stands for
    request: type[msgspec.Struct]
    reply: type[msgspec.Struct]
    summary: str

    @property
    def service(self) -> str:
        return self.target.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.target.split(".", 1)[1]


METHODS: dict[str, Method] = {
    m.target: m
    for m in (
        Method("maestro.plan", "maestro:plan", PlanRequest, PlanReply,
               "Produce an execution plan from a goal and constraints."),
        Method("maestro.allocate", "maestro:allocate", PlanRef, Allocated,
               "Allocate plan steps to executors; binding work orders, then MOON dispatch."),
        Method("maestro.ratify", "maestro:ratify", PlanRef, StateReply,
               "Approve or reject a plan that awaits ratification."),
        Method("maestro.replan", "maestro:plan", ReplanRequest, StateReply,
               "Re-plan on deviation, reusing MOON's durable state."),
        Method("moon.dispatch", capability_of("dispatch"), DispatchRequest, DispatchReply,
               "Dispatch a new durable workflow, journaled from the first instruction."),
        Method("moon.checkpoint", capability_of("checkpoint"), CheckpointRequest, DispatchReply,
               "Checkpoint a long-running step; survives replay."),
        Method("moon.compensate", capability_of("compensate"), CompensateRequest, DispatchReply,
               "Run compensation for a workflow."),
        Method("moon.replay", capability_of("replay"), ReplayRequest, ReplayReply,
               "Replay a workflow from its recorded journal."),
    )
}  # fmt: skip


def method(target: str) -> Method | None:
    return METHODS.get(target)


def input_schema(m: Method) -> dict[str, Any]:
    """The JSON Schema of a method's body, generated from its request Struct (refs inlined
    under `$defs`, as MCP tool input schemas and OpenAPI 3.1 both accept)."""
    full = msgspec.json.schema(m.request)
    defs: dict[str, Any] = full["$defs"]
    return {**defs[m.request.__name__], "$defs": defs}
