"""Keeps a live set of revoked grant/treaty refs from a NATS KV bucket, for Trust.revoked."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from streams.subjects import Space

__all__ = ["REVOKED_BUCKET", "RevocationWatcher", "revoke"]

REVOKED_BUCKET = "envelope_revoked"
ROOT_SPACE = Space()


async def revoke(
    js: JetStreamContext, ref: bytes, *, space: Space = ROOT_SPACE, bucket: str = REVOKED_BUCKET
) -> None:
    """Revoke a grant or treaty by its ref; every watching gate refuses it from then on."""
    kv = await js.key_value(space.bucket(bucket))
    await kv.put(ref.hex(), b"revoked")


class RevocationWatcher:
    """`revoked` is the set a Trust holds; `run()` follows the bucket until cancelled."""

    def __init__(
        self, js: JetStreamContext, *, space: Space = ROOT_SPACE, bucket: str = REVOKED_BUCKET
    ) -> None:
        self._js = js
        self._name = space.bucket(bucket)
        self.revoked: set[bytes] = set()

    async def run(self) -> None:
        try:
            kv = await self._js.key_value(self._name)
        except BucketNotFoundError:
            raise RuntimeError(f"revocation bucket {self._name} does not exist") from None
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:  # end of the initial values; keep following
                continue
            try:
                ref = bytes.fromhex(entry.key)
            except ValueError:
                continue  # not a ref we wrote; ignoring it cannot un-revoke anything
            if entry.operation in ("DEL", "PURGE"):
                self.revoked.discard(ref)
            else:
                self.revoked.add(ref)
