"""Every broker-rights test runs twice: on the embedded default and on deploy/'s rendering."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streams.broker import find_server_binary
from streams.subjects import Space
from tests.security.world import BASELINE, Secured


@pytest.fixture(params=["embedded", "deploy"])
async def secured(request: pytest.FixtureRequest, tmp_path: Path,
                  space: Space) -> AsyncIterator[Secured]:
    try:
        find_server_binary()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    if request.param == "deploy":
        if BASELINE:
            pytest.skip("the baseline is the embedded default without auth")
        world = await Secured.start_deployed(tmp_path / "deployed")
    else:
        world = await Secured.start(tmp_path / "secured", space)
    try:
        yield world
    finally:
        await world.stop()


@pytest.fixture
def embedded_only(secured: Secured) -> None:
    """For what only the embedded broker does: generate, reload, rotate on a running server."""
    if secured.mode == "deploy":
        pytest.skip("deploy/ servers take keys from their environment: rotate by restart")
