"""Health over NATS and Prometheus metrics of a real `moon serve` process.

The engine runs as a child process (as an operator runs it), answers `health.moon-engine` and
the NATS micro verbs, counts what it does on /metrics and in `$SRV.STATS`, and on SIGTERM stops
answering and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import msgspec
import nats.errors
import pytest

from moon.effects import Effects
from moon.worker import Result, StepContext
from streams.config import Topology, ensure_streams
from streams.health import Health, probe

from . import fault_world as fw
from .engine_world import dispatch, step, worker


def _spawn(url: str, space, log: Path) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-c", "from moon.cli import main; main()", "serve",
         "--metrics-port", "0"],
        env=fw._env(url, space), stdout=out, stderr=out, cwd=fw.ROOT,
    )


def _metrics_url(log: Path) -> str | None:
    found = re.search(r'"url": "(http://127\.0\.0\.1:\d+/metrics)"', log.read_text())
    return found.group(1) if found else None


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$" if labels else (
        rf"^{re.escape(name)} (\S+)$")
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
async def test_moon_serve_answers_health_counts_work_and_stops_on_sigterm(
    nats_url, nc, js, space, tmp_path: Path
):
    await ensure_streams(js, Topology(space=space))
    log = tmp_path / "engine.log"
    proc = _spawn(nats_url, space, log)
    try:
        async def healthy() -> Health | None:
            try:
                return await probe(nc, "moon-engine", space=space, timeout_s=0.5)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                return None

        health = await fw.wait_for(healthy, 20)
        assert health.ok, health.failing
        assert health.service == "moon-engine"
        assert health.metadata["space"] == space.prefix

        # The micro verbs answer for this very instance.
        info = json.loads((await nc.request(f"$SRV.INFO.moon-engine.{health.id}", b"",
                                            timeout=2)).data)
        assert info["name"] == "moon-engine"
        assert any(e["name"] == "health" for e in info["endpoints"])

        async def work(ctx: StepContext) -> Result:
            return Result(output=b"ok", tokens=1)

        command = dispatch([step("a"), step("b", needs=("a",))])
        async with worker(nc, space, {"work": work}):
            await Effects(js, space).send_command(command)
            finals = await fw.wait_all_terminal(js, space, [command.workflow_id], timeout_s=30)
        assert finals[command.workflow_id].status == "completed"

        url = await fw.wait_for(lambda: asyncio.sleep(0, _metrics_url(log)), 10)
        text = await asyncio.to_thread(_scrape, url)
        assert _sample(text, "moon_events_total", type="moon.dispatched") >= 1
        assert _sample(text, "moon_events_total", type="moon.step.completed") >= 2
        assert _sample(text, "moon_events_total", type="moon.workflow.completed") >= 1
        assert _sample(text, "moon_commands_total", kind="complete_step",
                       outcome="decided") >= 2
        assert _sample(text, "moon_command_seconds_count", kind="dispatch") >= 1
        assert "process_resident_memory_bytes" in text

        stats = json.loads((await nc.request(f"$SRV.STATS.moon-engine.{health.id}", b"",
                                             timeout=2)).data)
        data = stats["endpoints"][0]["data"]
        assert data["moon_events_total{type=moon.dispatched}"] >= 1

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, log.read_text()[-2000:]
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await probe(nc, "moon-engine", space=space, timeout_s=0.5)
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
