"""A private broker with auth whose users are rendered for one space, and probes that tell an
allowed action from one the server refuses (a "Permissions Violation" the server reports).

MAESTRO_SECURITY_BASELINE=1 starts the same world without auth and every client without
credentials: the attack tests must then fail (what they test is the broker's defence).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from streams.broker import EmbeddedBroker, open_connection
from streams.config import Topology, ensure_streams
from streams.credentials import (
    NKEY_ENV,
    add_executor,
    ensure_credentials,
    public_key,
    rotate,
    seed_file,
)
from streams.roles import BASE_ROLES, executor_role, nkey_variable, render_deploy
from streams.subjects import Space

BASELINE = os.environ.get("MAESTRO_SECURITY_BASELINE") == "1"
DENY_S = 3.0  # how long a probe waits for the server's verdict before calling it allowed
# The executors a deploy/-rendered server knows from its start (its keys come from the
# environment, which a reload does not re-read).
DEPLOYED_EXECUTORS = {"x1": ("work",), "x2": ("work", "gpu")}


@dataclass
class Violations:
    """The permission errors the server sent one client, to await one by subject."""

    seen: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_error(self, error: Exception) -> None:
        self.seen.append(str(error))
        self.changed.set()

    async def wait_for(self, subject: str, timeout_s: float = DENY_S) -> bool:
        """True once the server said that `subject` was denied to this client."""
        needle = f'"{subject}"'.lower()  # nats-py lower-cases the server's error line
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not any("permissions violation" in e.lower() and needle in e.lower()
                      for e in self.seen):
            self.changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return True


@dataclass
class Secured:
    broker: EmbeddedBroker
    space: Space
    clients: list[Client] = field(default_factory=list)
    violations: dict[int, Violations] = field(default_factory=dict)
    mode: str = "embedded"  # or "deploy": deploy/accounts.conf's rendering, keys from env

    @classmethod
    async def start(cls, root: Path, space: Space) -> Secured:
        broker = EmbeddedBroker(data_dir=root / "nats", creds=root / "creds", space=space,
                                auth=not BASELINE)
        await asyncio.to_thread(broker.start)
        world = cls(broker, space)
        admin = await world.connect("admin")
        await ensure_streams(admin.jetstream(), Topology(space=space))
        return world

    @classmethod
    async def start_deployed(cls, root: Path) -> Secured:
        """A server configured as deploy/ is: render_deploy's accounts, included, each nkey a
        `$NKEY_*` the server substitutes from its environment; production space (no prefix)."""
        creds = ensure_credentials(root / "creds")
        for executor_id, capabilities in DEPLOYED_EXECUTORS.items():
            add_executor(creds, executor_id, capabilities)
        roles = [*BASE_ROLES, *(executor_role(e) for e in DEPLOYED_EXECUTORS)]
        env = {nkey_variable(r): public_key(seed_file(creds, r).read_text()) for r in roles}
        env["NKEY_SYS"] = public_key(rotate(root, "admin").read_text())  # a key of its own
        data = root / "nats"
        data.mkdir(parents=True)
        (data / "accounts.conf").write_text(render_deploy(DEPLOYED_EXECUTORS))
        broker = EmbeddedBroker(data_dir=data, creds=creds, space=Space(), auth=False,
                                extra_config='include "accounts.conf"\n', server_env=env)
        await asyncio.to_thread(broker.start)
        world = cls(broker, Space(), mode="deploy")
        admin = await world.connect("admin")
        await ensure_streams(admin.jetstream(), Topology(space=world.space))
        return world

    @property
    def url(self) -> str:
        return self.broker.url

    async def connect(self, role: str, *, name: str | None = None, **options: Any) -> Client:
        """A client authenticated as `role`, its permission errors recorded for the probes."""
        seen = Violations()
        creds = None if BASELINE else self.broker.seed(role)
        if BASELINE:
            options.setdefault("inbox_prefix", "_INBOX")
        nc = await open_connection(self.url, name=name or role, role=role,
                                   credentials_file=creds, error_cb=seen.on_error, **options)
        self.clients.append(nc)
        self.violations[id(nc)] = seen
        return nc

    def provision(self, executor_id: str, capabilities: list[str] | tuple[str, ...] = ()) -> str:
        """Give an executor its user (reloading the server); returns its role. On a deploy/
        server, one of the executors it started with."""
        if self.mode == "deploy":
            assert set(capabilities) <= set(DEPLOYED_EXECUTORS[executor_id]), executor_id
            return executor_role(executor_id)
        return self.broker.provision_executor(executor_id, list(capabilities))

    def env(self, role: str) -> dict[str, str]:
        """The environment of a child process connecting as `role` (moon serve, moon worker)."""
        base = {k: v for k, v in os.environ.items() if k not in ("MAESTRO_HOME", NKEY_ENV)}
        return {**base, **self.broker.client_env(role)}

    # -- probes ---------------------------------------------------------------------------

    async def denied_publish(self, nc: Client, subject: str, data: bytes = b"x",
                             headers: dict[str, str] | None = None) -> bool:
        """Publish (core NATS); True when the server refused it."""
        await nc.publish(subject, data, headers=headers)
        await nc.flush()
        return await self.violations[id(nc)].wait_for(subject)

    async def denied_request(self, nc: Client, subject: str, body: Any = b"") -> bool:
        """A request (a JetStream API call, say); True when the server refused to carry it,
        False when something answered."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        ask = asyncio.ensure_future(nc.request(subject, data, timeout=DENY_S))
        verdict = asyncio.ensure_future(self.violations[id(nc)].wait_for(subject))
        done, _ = await asyncio.wait({ask, verdict}, return_when=asyncio.FIRST_COMPLETED)
        if verdict in done and verdict.result():
            ask.cancel()
            with contextlib.suppress(BaseException):
                await ask
            return True
        with contextlib.suppress(BaseException):
            await ask
        verdict.cancel()
        with contextlib.suppress(BaseException):
            await verdict
        if ask.exception() is None:
            return False  # answered: carried (the answer may still be an API error)
        return await self.violations[id(nc)].wait_for(subject, 0)

    async def denied_subscribe(self, nc: Client, subject: str, queue: str = "") -> bool:
        sub = await nc.subscribe(subject, queue=queue)
        await nc.flush()
        refused = await self.violations[id(nc)].wait_for(subject)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        return refused

    async def api(self, nc: Client, subject: str, body: Any = b"") -> dict[str, Any]:
        """A JetStream API call that must be carried: its decoded answer."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        reply = await nc.request(subject, data, timeout=10)  # carried: no verdict to wait out
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    async def stop(self) -> None:
        for nc in self.clients:
            with contextlib.suppress(Exception):
                await nc.close()
        await asyncio.to_thread(self.broker.stop)

