"""Write deploy/accounts.conf from streams/roles.py and deploy/executors.json.

    python deploy/render.py            # rewrite accounts.conf
    python deploy/render.py --keys D   # print the NKEY_* lines for the seeds in D (a shell env)
    python deploy/render.py --routes   # write deploy/routes.conf (0600) once: the route password

A cluster's routes carry every account's traffic with none of the accounts' rights, so each
node requires the route password and dials the others with it (nats-cluster-*.conf include
routes.conf). Keep routes.conf out of version control, as the seeds; a second run keeps the
password (delete the file and restart the nodes one at a time to change it).

An executor joins the deployment by a line in executors.json (id -> capabilities), a re-run,
its seed (`python -m streams.credentials new executor:<id> --dir D`) and NKEY_EXECUTOR_<ID>
in the servers' environment.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from streams.cluster import render_routes  # noqa: E402
from streams.credentials import new_seed, public_key, seed_file, write_private  # noqa: E402
from streams.roles import BASE_ROLES, executor_role, nkey_variable, render_deploy  # noqa: E402


def executors() -> dict[str, list[str]]:
    loaded: dict[str, list[str]] = json.loads((HERE / "executors.json").read_text())
    return loaded


def text() -> str:
    return render_deploy(executors())


# The compose services' and the systemd units' host names (docker-compose.yml).
NODES = ("maestro-1", "maestro-2", "maestro-3")


def write_routes(directory: Path) -> Path:
    """`directory/routes.conf`, made once: later runs keep the password the nodes share."""
    path = directory / "routes.conf"
    if not path.is_file():
        write_private(path, render_routes(secrets.token_urlsafe(32), [f"{n}:6222" for n in NODES]))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=Path, help="a credentials dir: print NKEY_*=<public key>")
    parser.add_argument("--routes", nargs="?", type=Path, const=HERE, metavar="DIR",
                        help="write DIR/routes.conf (default deploy/) if it is missing")
    args = parser.parse_args()
    if args.routes is not None:
        sys.stdout.write(f"{write_routes(args.routes)}\n")
        return
    if args.keys is None:
        (HERE / "accounts.conf").write_text(text())
        return
    lines = []
    for role in (*BASE_ROLES, *(executor_role(e) for e in executors())):
        seed = seed_file(args.keys, role)
        lines.append(f"{nkey_variable(role)}={public_key(seed.read_text())}")
    # The system account's user (server monitoring): a key of its own, made here if missing.
    system = args.keys / "sys.nk"
    if not system.is_file():
        write_private(system, new_seed() + "\n")
    lines.append(f"NKEY_SYS={public_key(system.read_text())}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
