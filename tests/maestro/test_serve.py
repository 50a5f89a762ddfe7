"""`maestro serve` as an operator runs it: health over NATS, /metrics, SIGTERM exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import nats.errors
import pytest

from streams.config import Topology, ensure_streams
from streams.health import probe

from .. import service_world as sw
from ..moon import fault_world as fw


@pytest.mark.slow
async def test_maestro_serve_is_healthy_exports_metrics_and_stops_on_sigterm(
    nats_url, nc, js, space, tmp_path: Path
):
    await ensure_streams(js, Topology(space=space))
    log = tmp_path / "maestro.log"
    proc = sw.spawn("maestro", ["serve", "--data-dir", str(tmp_path / "home")], nats_url, space,
                    log)
    try:
        health = await sw.healthy(nc, "maestro", space)
        assert health.ok, health.failing
        assert health.service == "maestro"
        info = json.loads((await nc.request(f"$SRV.INFO.maestro.{health.id}", b"",
                                            timeout=2)).data)
        assert [e["subject"] for e in info["endpoints"]] == [space.subject("health.maestro")]

        url = await fw.wait_for(lambda: asyncio.sleep(0, sw.metrics_url(log)), 10)
        text = await asyncio.to_thread(sw.scrape, url)
        assert "maestro_replan_seconds_count 0.0" in text

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, log.read_text()[-2000:]
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await probe(nc, "maestro", space=space, timeout_s=0.5)
    finally:
        fw.kill9(proc)
