"""Per-role NATS credentials: one NKey seed per role, 0600 files in a 0700 directory.

NKeys rather than passwords: the server's config holds only public keys (a leaked config
grants nothing), a client proves its key by signing the server's nonce (nothing replayable
crosses the wire), and rotating a role is "new seed, rewrite the config, SIGHUP".

Where a process finds its seed (streams/broker.py `open_connection`): an explicit path, else
NATS_NKEY (a seed file, as the `nats` CLI reads it), else the credentials of an embedded broker
this process started, else MAESTRO_CREDS (a directory of role seeds), else `<data_dir>/creds`.
"""

from __future__ import annotations

import json
import os
import secrets
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nkeys

from streams.roles import BASE_ROLES, User, executor_role, parse_role, rights
from streams.subjects import Space

__all__ = [
    "BASE_ROLES",
    "CREDS_ENV",
    "NKEY_ENV",
    "add_executor",
    "creds_dir",
    "ensure_credentials",
    "executors",
    "new_seed",
    "public_key",
    "remember",
    "role_of",
    "rotate",
    "seed_file",
    "users",
    "write_private",
]

CREDS_ENV = "MAESTRO_CREDS"
NKEY_ENV = "NATS_NKEY"
_REGISTRY = "executors.json"  # executor id -> the capabilities its user may take orders for


def creds_dir(data_dir: Path) -> Path:
    """MAESTRO_CREDS when set (one directory shared by several brokers: tests), else
    `<data_dir>/creds`."""
    explicit = os.environ.get(CREDS_ENV)
    return Path(explicit) if explicit else data_dir / "creds"


def seed_file(directory: Path, role: str) -> Path:
    """`engine.nk`, `executor-x1.nk`: one file per role (`:` is not for file names)."""
    parse_role(role)  # refuses what is not a role
    return directory / f"{role.replace(':', '-')}.nk"


def _private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)


def write_private(path: Path, text: str) -> None:
    """Written 0600 from the first byte: never readable by others, not even for an instant."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def new_seed() -> str:
    """A fresh NKey user seed (`SU…`), from the OS's CSPRNG."""
    seed: bytes = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode()


def public_key(seed: str) -> str:
    pair = nkeys.from_seed(bytearray(seed.strip().encode()))
    return str(pair.public_key.decode())


def _ensure(directory: Path, role: str) -> Path:
    path = seed_file(directory, role)
    if not path.is_file():
        write_private(path, new_seed() + "\n")
    return path


def ensure_credentials(directory: Path, roles: Iterable[str] = BASE_ROLES) -> Path:
    """Create what is missing (never overwrite: a running service holds those seeds)."""
    _private_dir(directory)
    for role in roles:
        _ensure(directory, role)
    return directory


def rotate(directory: Path, role: str) -> Path:
    """A new seed for `role`; the server accepts it once its config is rewritten and reloaded
    (`EmbeddedBroker.reload`), and refuses the old one from then on."""
    path = seed_file(directory, role)
    write_private(path, new_seed() + "\n")
    return path


def executors(directory: Path) -> dict[str, tuple[str, ...]]:
    path = directory / _REGISTRY
    if not path.is_file():
        return {}
    raw: Mapping[str, Any] = json.loads(path.read_text())
    return {str(k): tuple(str(c) for c in v) for k, v in raw.items()}


def add_executor(directory: Path, executor_id: str, capabilities: Sequence[str]) -> Path:
    """Register an executor's user (its id and the pools it may take from) and its seed; a
    second call updates the capabilities and keeps the seed."""
    role = executor_role(executor_id)  # refuses an id that is not [A-Za-z0-9_-]{1,64}
    _private_dir(directory)
    registry = executors(directory)
    registry[executor_id] = tuple(dict.fromkeys(capabilities))
    write_private(directory / _REGISTRY, json.dumps(
        {k: list(v) for k, v in sorted(registry.items())}, indent=1) + "\n")
    return _ensure(directory, role)


def users(directory: Path, space: Space) -> list[User]:
    """Every user the server should know, from the seeds on disk: base roles, then executors."""
    out: list[User] = []
    for role in BASE_ROLES:
        path = seed_file(directory, role)
        out.append(User(role, public_key(path.read_text()), rights(role, space)))
    for executor_id, capabilities in executors(directory).items():
        role = executor_role(executor_id)
        seed = seed_file(directory, role).read_text()
        out.append(User(role, public_key(seed), rights(role, space, capabilities)))
    return out


# Which role a live connection authenticated as: `ensure_streams` asks, so that a service never
# tries what only the admin may do (and says so in one line instead).
_ROLES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def remember(nc: Any, role: str | None) -> None:
    if role is not None:
        _ROLES[nc] = role


def role_of(nc: Any) -> str | None:
    """The role `nc` connected as; None for a server without auth (anything goes there)."""
    return _ROLES.get(nc)


# --- the operator's commands: python -m streams.credentials … ------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """init | public ROLE | rotate ROLE | provision ID CAP… | ensure (see README)."""
    import argparse  # noqa: PLC0415 - only the command line needs these
    import asyncio  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from streams import broker, config  # noqa: PLC0415 - they import this module

    parser = argparse.ArgumentParser(prog="python -m streams.credentials")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the embedded broker's data dir (default MAESTRO_HOME or .maestro)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create every base role's seed that is missing")
    for name in ("public", "rotate"):
        sub.add_parser(name, help=f"{name} a role's key").add_argument("role")
    provision = sub.add_parser("provision", help="give an executor a user of its own")
    provision.add_argument("executor_id")
    provision.add_argument("capabilities", nargs="*")
    ensure = sub.add_parser("ensure", help="as admin (NATS_URL, NATS_NKEY): make the streams")
    ensure.add_argument("--replicas", type=int, default=None)
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir or broker.home_dir()
    directory = creds_dir(data_dir)
    out = sys.stdout
    match args.command:
        case "init":
            ensure_credentials(directory)
            out.write(f"{directory}\n")
        case "public":
            out.write(public_key(seed_file(directory, args.role).read_text()) + "\n")
        case "rotate":
            seed = rotate(directory, args.role)
            if (data_dir / "auth.conf").is_file():
                broker.EmbeddedBroker(data_dir=data_dir).reload()
            out.write(public_key(seed.read_text()) + "\n")
        case "provision":
            seed = broker.provision_executor(data_dir, args.executor_id, args.capabilities)
            out.write(f"{seed}\n")
        case "ensure":
            async def run() -> list[str]:
                async with broker.connect(data_dir=data_dir, name="maestro-admin") as nc:
                    topology = config.Topology(
                        space=config.space_from_env(),
                        replicas=args.replicas or config.replicas_from_env())
                    return await config.ensure_streams(nc.jetstream(), topology)

            for line in asyncio.run(run()):
                out.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
