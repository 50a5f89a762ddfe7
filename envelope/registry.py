"""The executor registry: which key speaks for which executor id, what it may serve, how far
it is trusted. Each entry is a statement signed by a registrar (an organisation root or an
operator the deployment names), kept in the `moon_executors` KV bucket under the executor's
token.

Why a registry and not the offer or the order: work orders name executors by id
(`acme-writer`), and anyone can claim an id. The engine accepts a report for an attempt only
when the report's signer is the key registered for the executor the attempt is bound to; MAESTRO
plans with the trust written here, never with the trust an offer claims for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Container

import msgspec
from nats.js import JetStreamContext

from envelope.keys import KeyRing, Signer
from envelope.statement import open_signed, sign_statement
from streams.config import EXECUTORS
from streams.ids import check_id
from streams.replies import Refusal
from streams.subjects import Space, token

__all__ = [
    "REGISTRATION",
    "Registration",
    "Registry",
    "open_registration",
    "register",
    "sign_registration",
]

REGISTRATION = b"moon.executor.v1"


class Registration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    executor: str
    did: str
    capabilities: tuple[str, ...] = ()  # empty: any capability
    trust: float = 0.5
    issued_at_ms: int = 0
    expires_at_ms: int | None = None

    def serves(self, capability: str) -> bool:
        return not self.capabilities or capability in self.capabilities

    def valid_at(self, now_ms: int) -> bool:
        return self.expires_at_ms is None or now_ms < self.expires_at_ms


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Registration)


def sign_registration(registrar: Signer, registration: Registration) -> bytes:
    return sign_statement(registrar, REGISTRATION, _encode(registration))


def open_registration(
    data: bytes, *, keys: KeyRing, registrars: Container[str]
) -> Registration | Refusal:
    return open_signed(data, REGISTRATION, _decode, keys=keys, authors=registrars)


async def register(
    js: JetStreamContext, registrar: Signer, registration: Registration, *,
    space: Space | None = None,
) -> int:
    """Write (or replace) an executor's entry; returns the KV revision."""
    refused = check_id(registration.executor, "executor id")
    if refused is not None:
        raise ValueError(refused.detail)
    kv = await js.key_value((space or Space()).bucket(EXECUTORS.name))
    revision: int = await kv.put(token(registration.executor),
                                 sign_registration(registrar, registration))
    return revision


class Registry:
    """A live, verified view of the bucket: `get` is a dict hit after the first load; a watcher
    keeps it current, and an entry that does not verify is left out (and named in `rejected`)."""

    def __init__(self, js: JetStreamContext, *, registrars: Container[str],
                 space: Space | None = None, keys: KeyRing | None = None) -> None:
        self._js = js
        self._bucket = (space or Space()).bucket(EXECUTORS.name)
        self._registrars = registrars
        self._keys = keys or KeyRing()
        self.entries: dict[str, Registration] = {}
        self.rejected: dict[str, str] = {}
        self._loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Registry:
        if self._task is None:
            self._task = asyncio.ensure_future(self._follow())
        waiter = asyncio.ensure_future(self._loaded.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            self._task.result()  # raise what stopped it
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    @property
    def live(self) -> bool:
        return self._task is not None and not self._task.done()

    def get(self, executor: str) -> Registration | None:
        return self.entries.get(token(executor))

    async def fetch(self, executor: str) -> Registration | None:
        """The entry, asking the bucket if the watcher has not seen it yet (a worker registered
        a moment ago); a miss is not cached."""
        if (found := self.get(executor)) is not None:
            return found
        kv = await self._js.key_value(self._bucket)
        try:
            entry = await kv.get(token(executor))
        except Exception:  # KeyNotFoundError, or deleted
            return None
        self._accept(entry.key, entry.value or b"")
        return self.get(executor)

    def _accept(self, key: str, value: bytes) -> None:
        opened = open_registration(value, keys=self._keys, registrars=self._registrars)
        if isinstance(opened, Refusal) or token(opened.executor) != key:
            self.entries.pop(key, None)
            self.rejected[key] = opened.detail if isinstance(opened, Refusal) else "wrong key"
            return
        self.rejected.pop(key, None)
        self.entries[key] = opened

    async def _follow(self) -> None:
        kv = await self._js.key_value(self._bucket)
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:  # the initial values are all in
                self._loaded.set()
                continue
            if entry.operation in ("DEL", "PURGE"):
                self.entries.pop(entry.key, None)
            else:
                self._accept(entry.key, entry.value or b"")
            if not self._loaded.is_set() and entry.delta == 0:
                self._loaded.set()
