"""`maestro serve` as an operator runs it: health over NATS, /metrics, SIGTERM exits 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.config import Topology, ensure_streams

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
                                            timeout=10)).data)
        assert [e["subject"] for e in info["endpoints"]] == [space.subject("health.maestro")]

        text = await sw.metrics_text(log)
        assert "maestro_replan_seconds_count 0.0" in text

        await sw.stops_on_sigterm(proc, nc, "maestro", space, log)
    finally:
        fw.kill9(proc)
