"""Snapshots: folded state cached in a KV bucket, keyed by aggregate, stamped with a schema hash.

A snapshot whose stamp does not match the running code is ignored and the fold starts from the
beginning, so deleting every snapshot (or changing `evolve`) changes no answer, only speed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

__all__ = ["KvSnapshots", "MemorySnapshots", "Snapshot", "SnapshotStore", "schema_stamp"]

S = TypeVar("S")


def schema_stamp(state_type: Any, version: int) -> str:
    """A hash of the state's JSON schema plus a version bumped when `evolve` changes meaning."""
    schema = msgspec.json.encode(msgspec.json.schema(state_type), order="sorted")
    return hashlib.sha256(schema + str(version).encode()).hexdigest()[:16]


class Snapshot(msgspec.Struct, Generic[S], frozen=True):
    version: int  # the stream sequence the state was folded up to
    stamp: str
    state: S


class SnapshotStore(Protocol[S]):
    async def load(self, aggregate: str) -> Snapshot[S] | None: ...
    async def save(self, aggregate: str, version: int, state: S) -> None: ...


class _Envelope(msgspec.Struct, frozen=True):
    version: int
    stamp: str
    state: msgspec.Raw


@dataclass
class MemorySnapshots(Generic[S]):
    state_type: Any
    stamp: str
    data: dict[str, bytes] = field(default_factory=dict)

    async def load(self, aggregate: str) -> Snapshot[S] | None:
        raw = self.data.get(aggregate)
        return None if raw is None else _decode(raw, self.state_type, self.stamp)

    async def save(self, aggregate: str, version: int, state: S) -> None:
        self.data[aggregate] = _encode(version, self.stamp, state)


def _plain(aggregate: str, data: bytes) -> bytes:
    return data


def _unplain(aggregate: str, data: bytes) -> bytes | None:
    return data


class KvSnapshots(Generic[S]):
    """Snapshots in a JetStream KV bucket (created by ensure_streams with direct gets).

    `seal`/`unseal` wrap what is stored: MOON signs each snapshot with the engine's key, bound
    to its aggregate and to the journal sequence it folds, and `unseal` returns None for one
    it did not write, which is then ignored like a snapshot of other code (fold from scratch).
    """

    def __init__(self, js: JetStreamContext, bucket: str, state_type: Any, stamp: str, *,
                 seal: Callable[[str, bytes], bytes] = _plain,
                 unseal: Callable[[str, bytes], bytes | None] = _unplain) -> None:
        self._js, self._bucket, self.state_type, self.stamp = js, bucket, state_type, stamp
        self._seal, self._unseal = seal, unseal
        self._kv: Any = None

    async def _store(self) -> Any:
        if self._kv is None:
            self._kv = await self._js.key_value(self._bucket)
        return self._kv

    async def load(self, aggregate: str) -> Snapshot[S] | None:
        kv = await self._store()
        try:
            entry = await kv.get(aggregate)
        except (KeyNotFoundError, NotFoundError):
            return None
        if not entry.value:
            return None
        opened = self._unseal(aggregate, entry.value)
        return None if opened is None else _decode(opened, self.state_type, self.stamp)

    async def save(self, aggregate: str, version: int, state: S) -> None:
        kv = await self._store()
        await kv.put(aggregate, self._seal(aggregate, _encode(version, self.stamp, state)))

    async def delete_all(self) -> None:
        kv = await self._store()
        try:
            keys = await kv.keys()
        except Exception:  # NoKeysError when empty
            return
        for key in keys:
            await kv.purge(key)


def _encode(version: int, stamp: str, state: Any) -> bytes:
    return msgspec.json.encode(
        _Envelope(version=version, stamp=stamp, state=msgspec.Raw(msgspec.json.encode(state)))
    )


def _decode(raw: bytes, state_type: Any, stamp: str) -> Snapshot[Any] | None:
    try:
        envelope = msgspec.json.decode(raw, type=_Envelope)
        if envelope.stamp != stamp:
            return None  # written by other code: folding from scratch is the safe answer
        state = msgspec.json.decode(envelope.state, type=state_type)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return Snapshot(version=envelope.version, stamp=envelope.stamp, state=state)
