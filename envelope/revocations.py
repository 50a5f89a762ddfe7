"""Keeps a live set of revoked grant/treaty refs from a NATS KV bucket, for Trust.revoked.

`Revocations` is what a gate runs: the watcher under a watchdog. A watcher whose consumer was
deleted, whose bucket vanished or whose task died is restarted (with backoff), and `live` says
whether the set is known to be current, for health checks and for the gate's fail-closed rule.
A restart never empties the set: the new snapshot replaces the old one in one step, once it is
complete, so a revocation never lapses while the watcher reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Container, Iterator
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from streams.subjects import Space

__all__ = ["REVOKED_BUCKET", "RevocationWatcher", "Revocations", "Revoked", "revoke"]

REVOKED_BUCKET = "envelope_revoked"
ROOT_SPACE = Space()


async def revoke(
    js: JetStreamContext, ref: bytes, *, space: Space = ROOT_SPACE, bucket: str = REVOKED_BUCKET
) -> int:
    """Revoke a grant or treaty by its ref; every watching gate refuses it from then on.
    Returns the bucket revision of the revocation."""
    kv = await js.key_value(space.bucket(bucket))
    return int(await kv.put(ref.hex(), b"revoked"))


class Revoked(Container[bytes]):
    """What a Trust holds: the refs it was built with, and the live set a watcher keeps."""

    def __init__(self, static: Container[bytes], live: set[bytes]) -> None:
        self.static = static
        self.live = live

    def __contains__(self, ref: object) -> bool:
        return ref in self.live or ref in self.static

    def __iter__(self) -> Iterator[bytes]:  # for debugging and tests; Trust only asks `in`
        return iter(self.live)


class RevocationWatcher:
    """`revoked` is the set a Trust holds; `run()` follows the bucket until cancelled.

    `current` is set once the bucket's values at start are all in `revoked`.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        space: Space = ROOT_SPACE,
        bucket: str = REVOKED_BUCKET,
        revoked: set[bytes] | None = None,
    ) -> None:
        self._js = js
        self._name = space.bucket(bucket)
        self.revoked: set[bytes] = revoked if revoked is not None else set()
        self.current = asyncio.Event()
        self._watch: Any = None

    async def run(self) -> None:
        try:
            kv = await self._js.key_value(self._name)
        except BucketNotFoundError:
            raise RuntimeError(f"revocation bucket {self._name} does not exist") from None
        self._watch = await kv.watchall()
        snapshot: set[bytes] | None = set()  # the values at start; None once swapped in
        try:
            async for entry in self._watch:
                if entry is None:  # end of the initial values; keep following
                    if snapshot is not None:
                        self.revoked.clear()  # no await between: one step for every reader
                        self.revoked |= snapshot
                        snapshot = None
                        self.current.set()
                    continue
                target = self.revoked if snapshot is None else snapshot
                try:
                    ref = bytes.fromhex(entry.key)
                except ValueError:
                    continue  # not a ref we wrote; ignoring it cannot un-revoke anything
                if entry.operation in ("DEL", "PURGE"):
                    target.discard(ref)
                else:
                    target.add(ref)
        finally:
            with contextlib.suppress(Exception):
                await self._watch.stop()
        raise RuntimeError("revocation watch ended")

    async def check(self) -> None:
        """Raise unless the server still holds this watcher's consumer."""
        if self._watch is None or self._watch._sub is None:
            raise RuntimeError("revocation watch not started")
        await self._watch._sub.consumer_info()


class Revocations:
    """A RevocationWatcher kept alive: `run()` until cancelled; `live` for health."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        space: Space = ROOT_SPACE,
        bucket: str = REVOKED_BUCKET,
        check_every_s: float = 5.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._js = js
        self._space = space
        self._bucket = bucket
        self._check_every_s = check_every_s
        self._max_backoff_s = max_backoff_s
        self.revoked: set[bytes] = set()
        self.restarts = 0
        self.last_error = ""
        self._live = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        self._log = structlog.get_logger("envelope.revocations").bind(bucket=space.bucket(bucket))

    @property
    def live(self) -> bool:
        """The set holds every revocation in the bucket and the watch is being followed."""
        return self._live.is_set()

    async def wait_live(self) -> None:
        await self._live.wait()

    async def wait_down(self) -> None:
        await self._down.wait()

    def _set_live(self, live: bool) -> None:
        (self._live.set if live else self._live.clear)()
        (self._down.clear if live else self._down.set)()

    async def run(self) -> None:
        backoff = 0.05
        while True:
            watcher = RevocationWatcher(self._js, space=self._space, bucket=self._bucket,
                                        revoked=self.revoked)
            task = asyncio.get_running_loop().create_task(watcher.run())
            try:
                await self._follow(watcher, task)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.last_error = f"{type(error).__name__}: {error}"
            finally:
                self._set_live(False)
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            self.restarts += 1
            self._log.warning("revocation_watch_restarting", error=self.last_error,
                              restarts=self.restarts)
            # A watch that had caught up failed for a new reason: retry at once; one that keeps
            # failing before it catches up (no bucket, no rights) backs off.
            backoff = 0.05 if watcher.current.is_set() else min(self._max_backoff_s, backoff * 2)
            await asyncio.sleep(backoff)

    async def _follow(self, watcher: RevocationWatcher, task: asyncio.Task[None]) -> None:
        current = asyncio.get_running_loop().create_task(watcher.current.wait())
        try:
            await asyncio.wait({task, current}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            current.cancel()
        while not task.done():
            if watcher.current.is_set():
                self._set_live(True)
            await asyncio.wait({task}, timeout=self._check_every_s)
            if not task.done():
                await watcher.check()  # raises when the consumer is gone: restart
        task.result()  # re-raise why the watch ended
