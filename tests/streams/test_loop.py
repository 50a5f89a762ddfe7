"""The services' event loop: uvloop unless MOON_LOOP=asyncio says otherwise."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from streams.loop import GC_THRESHOLDS, LOOP_ENV, loop_name, run


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    """`run` tunes the process's collector; the test process keeps its own."""
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_a_service_runs_on_uvloop_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOOP_ENV, raising=False)
    assert loop_name() == "uvloop"
    assert run(_loop_module()).startswith("uvloop")


def test_moon_loop_asyncio_runs_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    assert loop_name() == "asyncio"
    assert run(_loop_module()).startswith("asyncio")


async def _collector() -> tuple[tuple[int, int, int], int]:
    return gc.get_threshold(), gc.get_freeze_count()


def test_a_service_collects_less_often_and_never_rescans_what_it_imported() -> None:
    gc.unfreeze()
    thresholds, frozen = run(_collector())
    assert thresholds == GC_THRESHOLDS
    assert frozen > 1000  # the modules and objects loaded before the loop started
