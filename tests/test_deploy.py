"""deploy/ configs are accepted by the real nats-server binary (`nats-server -t`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from streams.broker import find_server_binary

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ENV = {f"{who}_PASSWORD": "test" for who in ("MOON", "MAESTRO", "EXECUTOR", "OPERATOR", "SYS")}


CONFIGS = ["nats-single.conf", *(f"nats-cluster-{i}.conf" for i in (1, 2, 3))]


@pytest.mark.parametrize("name", CONFIGS)
def test_the_server_accepts_the_config(name):
    done = subprocess.run([find_server_binary(), "-t", "-c", str(DEPLOY / name)],
                          capture_output=True, text=True, env={**os.environ, **ENV},
                          cwd=DEPLOY, check=False)
    assert done.returncode == 0, done.stderr
    assert "is valid" in done.stdout + done.stderr
