"""A toy service behind a real gate, shared by the gate tests and the gate's security tests."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from envelope.client import Client
from envelope.gate import Gate
from envelope.grants import Caveats, mint_grant
from envelope.keys import KeyRing, Signer, signer_from_seed
from envelope.seal import Opened, Trust
from streams.audit import AuditRecord
from streams.replies import Reason, Refusal
from streams.subjects import Space

HOUR = 3_600_000
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BODY = {"intent": "the conductor", "budget": {"tokens": 200, "deadline_ms": 8000}}


class Dispatch(msgspec.Struct, frozen=True):
    intent: str
    budget: dict[str, int] | None = None
    workflow_id: str | None = None


class Dispatched(msgspec.Struct, frozen=True):
    workflow_id: str


def key(name: str) -> Signer:
    return signer_from_seed(hashlib.sha256(name.encode()).digest())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Moon:
    """A toy moon.dispatch behind a gate; counts how often its handler really ran."""

    def __init__(self, nc: Nats, space: Space, *, trust: Trust | None = None, **gate: Any) -> None:
        self.root, self.service, self.caller = key("root"), key("moon"), key("alice")
        self.runs = 0
        self.trust = trust or Trust(
            audience=self.service.did,
            keys=KeyRing(),
            roots=frozenset({self.root.did}),
        )
        self.gate = Gate(nc, service="moon", signer=self.service, trust=self.trust, space=space,
                         **gate)
        self.gate.route("dispatch", self.dispatch)
        self.gate.route("explode", self.explode)
        self.grant = self.grant_for(self.caller)
        self.client = self.client_for(nc, self.caller, space)

    def grant_for(self, who: Signer, **caveats: Any) -> bytes:
        now = now_ms()
        return mint_grant(
            self.root,
            audience=who.did,
            capability="moon:*",
            not_before_ms=now - HOUR,
            expiry_ms=now + HOUR,
            nonce=hashlib.sha256(who.did.encode()).digest()[:16],
            caveats=Caveats(**{"max_tokens": 1_000_000, **caveats}),
        )

    def client_for(self, nc: Nats, who: Signer, space: Space, **options: Any) -> Client:
        grant = self.grant if who is self.caller else self.grant_for(who)
        return Client(nc, who, {"moon": self.service.did}, grant=[grant], space=space, **options)

    async def dispatch(self, opened: Opened) -> Dispatched | Refusal:
        self.runs += 1
        body = msgspec.msgpack.decode(opened.body, type=Dispatch)
        if body.intent == "no":
            return Refusal(Reason.POLICY_BLOCK, "this service says no")
        return Dispatched(workflow_id=f"wf-{self.runs}")

    async def explode(self, opened: Opened) -> Dispatched:
        raise RuntimeError("boom")


async def audit_records(js: JetStreamContext, space: Space) -> list[AuditRecord]:
    info = await js.stream_info(space.stream("AUDIT"))
    records: list[AuditRecord] = []
    if info.state.messages == 0:
        return records
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(space.stream("AUDIT"), seq)
        assert msg.data is not None
        records.append(msgspec.json.decode(msg.data, type=AuditRecord))
    return records


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 5.0,
                     every_s: float = 0.02) -> bool:
    """Poll an observable until it holds (for effects with no event to await, e.g. a durable
    consumer's progress); False when it never did within the timeout."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await check():
            return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(every_s)
