"""Write deploy/accounts.conf from streams/roles.py and deploy/executors.json.

    python deploy/render.py            # rewrite accounts.conf
    python deploy/render.py --keys D   # print the NKEY_* lines for the seeds in D (a shell env)

An executor joins the deployment by a line in executors.json (id -> capabilities), a re-run,
its seed (`python -m streams.credentials new executor:<id> --dir D`) and NKEY_EXECUTOR_<ID>
in the servers' environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from streams.credentials import new_seed, public_key, seed_file, write_private  # noqa: E402
from streams.roles import BASE_ROLES, executor_role, nkey_variable, render_deploy  # noqa: E402


def executors() -> dict[str, list[str]]:
    loaded: dict[str, list[str]] = json.loads((HERE / "executors.json").read_text())
    return loaded


def text() -> str:
    return render_deploy(executors())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=Path, help="a credentials dir: print NKEY_*=<public key>")
    args = parser.parse_args()
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
