"""A JetStream API answering 503 for a moment (every config reload does) is waited out at start."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.errors import NotFoundError, ServiceUnavailableError

from streams.config import WORKFLOWS, StreamsMissing, ensure_bucket
from streams.credentials import remember
from streams.subjects import Space


class _Connection:
    pass


class Reloading:
    """A JetStream context whose API is away for `busy` calls, then has the bucket or not."""

    def __init__(self, busy: int, *, exists: bool) -> None:
        self.busy, self.exists, self.created = busy, exists, False
        self._nc = _Connection()
        remember(self._nc, "engine")  # not the admin: creating is refused

    async def key_value(self, name: str) -> Any:
        if self.busy:
            self.busy -= 1
            raise ServiceUnavailableError()
        if not self.exists:
            raise NotFoundError()
        return object()


async def test_a_bucket_is_found_after_the_server_comes_back() -> None:
    js = Reloading(3, exists=True)
    assert await ensure_bucket(js, Space("t"), WORKFLOWS) is False  # type: ignore[arg-type]
    assert js.busy == 0


async def test_a_missing_bucket_is_still_missing_not_unavailable() -> None:
    js = Reloading(2, exists=False)
    with pytest.raises(StreamsMissing, match="does not exist"):
        await ensure_bucket(js, Space("t"), WORKFLOWS)  # type: ignore[arg-type]
