"""A service as an operator runs it: a child process with health over NATS and /metrics."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client

from streams.health import Health, probe
from streams.logs import log_line
from streams.subjects import Space

from .moon import fault_world as fw

CLIS = {
    "moon": "from moon.cli import main; main()",
    "maestro": "from maestro.cli import main; main()",
}


def spawn(cli: str, args: list[str], url: str, space: Space, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-c", CLIS[cli], *args, "--metrics-port", "0"],
                            env=fw._env(url, space), stdout=out, stderr=out, cwd=fw.ROOT)


async def healthy(nc: Client, name: str, space: Space, timeout_s: float = 20) -> Health:
    async def answer() -> Health | None:
        try:
            return await probe(nc, name, space=space, timeout_s=0.5)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return None

    health: Health = await fw.wait_for(answer, timeout_s)
    return health


async def stops_on_sigterm(proc: subprocess.Popen[bytes], nc: Client, name: str, space: Space,
                           log: Path) -> None:
    """SIGTERM: the process exits 0 and its health endpoint is gone."""
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 20) == 0, log.read_text()[-2000:]
    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
        await probe(nc, name, space=space, timeout_s=0.5)


async def metrics_text(log: Path) -> str:
    """The /metrics page of the process whose log names its URL."""
    url: str = await fw.wait_for(lambda: asyncio.sleep(0, metrics_url(log)), 10)
    return await asyncio.to_thread(scrape, url)


def metrics_url(log: Path) -> str | None:
    for line in log.read_text().splitlines():
        url = (log_line(line) or {}).get("url")
        if isinstance(url, str) and re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url):
            return url
    return None


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from the exposition text (0 when absent, as Prometheus reads it)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = (rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$" if labels
               else rf"^{re.escape(name)} (\S+)$")
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
