"""Health over NATS and Prometheus metrics of a real `moon serve` process.

The engine runs as a child process (as an operator runs it), answers `health.moon-engine` and
the NATS micro verbs, counts what it does on /metrics and in `$SRV.STATS`, and on SIGTERM stops
answering and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import msgspec
import pytest

from moon.worker import Result, StepContext
from streams.config import Topology, ensure_streams
from streams.health import Health, probe

from .. import service_world as sw
from .. import walls as tw
from . import fault_world as fw
from .engine_world import dispatch, step, worker


@pytest.mark.slow
async def test_moon_serve_answers_health_counts_work_and_stops_on_sigterm(
    nats_url, nc, js, space, tmp_path: Path
):
    await ensure_streams(js, Topology(space=space))
    log = tmp_path / "engine.log"
    proc = sw.spawn("moon", ["serve"], nats_url, space, log)
    try:
        health = await sw.healthy(nc, "moon-engine", space)
        assert health.ok, health.failing
        assert health.service == "moon-engine"
        assert health.metadata["space"] == space.prefix

        # The micro verbs answer for this very instance.
        info = json.loads((await nc.request(f"$SRV.INFO.moon-engine.{health.id}", b"",
                                            timeout=10)).data)
        assert info["name"] == "moon-engine"
        assert any(e["name"] == "health" for e in info["endpoints"])

        async def work(ctx: StepContext) -> Result:
            return Result(output=b"ok", tokens=1)

        command = dispatch([step("a"), step("b", needs=("a",))])
        async with worker(nc, space, {"work": work}):
            await tw.send_dispatch(nc, space, command)
            finals = await fw.wait_all_terminal(js, space, [command.workflow_id], timeout_s=30)
        assert finals[command.workflow_id].status == "completed"

        text = await sw.metrics_text(log)
        assert sw.sample(text, "moon_events_total", type="moon.dispatched") >= 1
        assert sw.sample(text, "moon_events_total", type="moon.step.completed") >= 2
        assert sw.sample(text, "moon_events_total", type="moon.workflow.completed") >= 1
        assert sw.sample(text, "moon_commands_total", kind="complete_step",
                       outcome="decided") >= 2
        assert sw.sample(text, "moon_command_seconds_count", kind="dispatch") >= 1
        assert "process_resident_memory_bytes" in text

        stats = json.loads((await nc.request(f"$SRV.STATS.moon-engine.{health.id}", b"",
                                             timeout=10)).data)
        data = stats["endpoints"][0]["data"]
        assert data["moon_events_total{type=moon.dispatched}"] >= 1

        await sw.stops_on_sigterm(proc, nc, "moon-engine", space, log)
    finally:
        fw.kill9(proc)


async def test_health_names_the_failing_check(nc, space):
    from streams.health import health_service  # noqa: PLC0415

    async def down() -> str | None:
        return "not consuming commands"

    service = await health_service(nc, "moon-engine", space=space, checks={"engine": down})
    try:
        health = await probe(nc, "moon-engine", space=space)
    finally:
        await service.stop()
    assert not health.ok
    assert health.failing == {"engine": "not consuming commands"}
    assert msgspec.json.decode(msgspec.json.encode(health), type=Health) == health


async def test_serve_engine_fails_instead_of_waiting_when_the_engine_cannot_start(nc):
    from envelope.registry import Registry  # noqa: PLC0415
    from moon.engine import Engine  # noqa: PLC0415
    from moon.service import serve_engine  # noqa: PLC0415
    from streams.subjects import Space  # noqa: PLC0415

    nowhere = Space("nostreams")  # no MOON_CMD stream: subscribing fails
    engine = Engine(nc, walls=tw.walls_for(nowhere), space=nowhere,
                    registry=Registry(nc.jetstream(), registrars=frozenset(), space=nowhere))
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(Exception) as caught:
            await asyncio.wait_for(serve_engine(engine), 10)
        assert not isinstance(caught.value, TimeoutError)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def test_health_answers_in_time_when_a_check_hangs(nc, space):
    from streams.health import health_service  # noqa: PLC0415

    async def hangs() -> str | None:
        await asyncio.Event().wait()  # e.g. JetStream without quorum
        return None

    service = await health_service(nc, "moon-worker", space=space, checks={"worker": hangs})
    try:
        # the check gives up at 1 s; the probe's own wait has slack for a busy machine
        health = await probe(nc, "moon-worker", space=space, timeout_s=10.0)
    finally:
        await service.stop()
    assert not health.ok
    assert health.failing == {"worker": "no answer in 1 s"}
