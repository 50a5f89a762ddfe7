"""deploy/ configs: accepted by the real nats-server, generated from streams/roles.py and up to
date, and their `$NKEY_*` variables really substituted from the environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nats
import pytest
import yaml

from streams.broker import EmbeddedBroker, find_server_binary, open_connection
from streams.credentials import add_executor, ensure_credentials, public_key, rotate, seed_file
from streams.roles import BASE_ROLES, executor_role, nkey_variable, render_deploy

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CONFIGS = ["nats-single.conf", *(f"nats-cluster-{i}.conf" for i in (1, 2, 3))]
EXECUTORS: dict[str, list[str]] = json.loads((DEPLOY / "executors.json").read_text())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Seeds for every deployed role, and the environment the servers get (public keys)."""
    creds = ensure_credentials(tmp_path_factory.mktemp("deploy-creds"))
    for executor_id, capabilities in EXECUTORS.items():
        add_executor(creds, executor_id, capabilities)
    roles = [*BASE_ROLES, *(executor_role(e) for e in EXECUTORS)]
    env = {nkey_variable(r): public_key(seed_file(creds, r).read_text()) for r in roles}
    system = ensure_credentials(creds / "sys", roles=())
    env["NKEY_SYS"] = public_key(rotate(system, "admin").read_text())  # a key of its own
    return creds, env


def _check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NKEY_")}
    return subprocess.run([find_server_binary(), "-t", "-c", str(config)], capture_output=True,
                          text=True, env={**base, **env}, cwd=config.parent, check=False)


def _render_routes(directory: Path) -> Path:
    subprocess.run([sys.executable, str(DEPLOY / "render.py"), "--routes", str(directory)],
                   check=True, capture_output=True)
    return directory / "routes.conf"


@pytest.mark.parametrize("name", CONFIGS)
def test_the_server_accepts_the_config(name, keys, tmp_path):
    """Each config as deployed: beside accounts.conf and the routes.conf render.py writes."""
    for file in (name, "accounts.conf"):
        shutil.copy(DEPLOY / file, tmp_path / file)
    _render_routes(tmp_path)
    done = _check(tmp_path / name, keys[1])
    assert done.returncode == 0, done.stderr
    assert "is valid" in done.stdout + done.stderr


def test_every_cluster_route_needs_the_password_render_writes_once_and_privately(tmp_path):
    """Each node requires the route password and dials every node with it; a second run keeps
    the password the running nodes share; nobody but the owner may read it."""
    routes = _render_routes(tmp_path)
    text = routes.read_text()
    assert routes.stat().st_mode & 0o077 == 0
    password = re.search(r'password: "([^"]+)"', text)
    assert password is not None and len(password.group(1)) >= 32
    dialled = re.findall(r"nats-route://route:([^@]+)@(maestro-\d):6222", text)
    assert dialled == [(password.group(1), f"maestro-{i}") for i in (1, 2, 3)]
    assert _render_routes(tmp_path).read_text() == text
    for i in (1, 2, 3):
        conf = (DEPLOY / f"nats-cluster-{i}.conf").read_text()
        assert 'include "routes.conf"' in conf and "nats-route://" not in conf


def test_accounts_conf_is_generated_from_the_roles():
    """`python deploy/render.py` has been run since streams/roles.py last changed."""
    assert (DEPLOY / "accounts.conf").read_text() == render_deploy(EXECUTORS)
    assert '"$NKEY' not in (DEPLOY / "accounts.conf").read_text()  # quoted: taken literally


def test_an_unset_key_stops_the_server(keys):
    env = dict(keys[1])
    env.pop("NKEY_ENGINE")
    done = _check(DEPLOY / "nats-single.conf", env)
    assert done.returncode != 0
    assert "NKEY_ENGINE" in done.stderr


async def test_the_keys_come_from_the_environment(tmp_path, keys):
    """The checked-in accounts.conf on a real server: each role's seed is accepted because its
    public key came through `$NKEY_*`; no key, no entry; and the rights are the roles'."""
    creds, env = keys
    find_server_binary()
    data = tmp_path / "nats"
    data.mkdir()
    shutil.copy(DEPLOY / "accounts.conf", data / "accounts.conf")
    broker = EmbeddedBroker(data_dir=data, auth=False, extra_config='include "accounts.conf"\n',
                            server_env=env).start()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(broker.url, max_reconnect_attempts=0, allow_reconnect=False)
        for role in (*BASE_ROLES, *(executor_role(e) for e in EXECUTORS)):
            nc = await open_connection(broker.url, role=role,
                                       credentials_file=seed_file(creds, role))
            await nc.flush()
            await nc.close()
        admin = await open_connection(broker.url, credentials_file=seed_file(creds, "admin"))
        await admin.jetstream().add_stream(name="MOON", subjects=["moon.wf.>"])
        errors: list[str] = []

        async def on_error(error: Exception) -> None:
            errors.append(str(error))

        role = executor_role(next(iter(EXECUTORS)))
        executor = await open_connection(broker.url, role=role, error_cb=on_error,
                                         credentials_file=seed_file(creds, role))
        with pytest.raises(nats.errors.TimeoutError):
            await executor.request("$JS.API.STREAM.DELETE.MOON", b"", timeout=1)
        assert any("permissions violation" in e for e in errors)
        await executor.close()
        await admin.close()
    finally:
        broker.stop()


def test_every_service_connects_with_its_own_seed():
    """No shared passwords left; each service is given one seed file, its own."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    apps = {name: spec for name, spec in compose["services"].items() if "build" in spec}
    assert set(apps) == {"init", "moon", "maestro", "executor"}
    for name, spec in apps.items():
        assert spec["environment"]["NATS_NKEY"].startswith("/run/secrets/"), name
        assert len(spec["secrets"]) == 1, name
    assert compose["secrets"]["admin_nkey"] == {"file": "./creds/admin.nk"}
    for unit, seed in (("moon.service", "engine.nk"), ("moon-worker@.service", "executor-%i.nk")):
        assert f"NATS_NKEY=/etc/maestro/creds/{seed}" in (DEPLOY / "systemd" / unit).read_text()
    for text in [(DEPLOY / n).read_text() for n in ("docker-compose.yml", "accounts.conf")]:
        assert "PASSWORD" not in text and "change-me" not in text
