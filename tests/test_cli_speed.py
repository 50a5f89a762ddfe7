"""The CLI's start-up budget (`--help` < 0.2 s, `moon list` < 0.4 s) as what it is made of:
what a command imports. Timings flake on a shared machine; imports do not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.models import OptionInfo

from streams.cli_params import _coercer

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pydantic", "moon.workflow", "moon.engine", "maestro.solve", "ortools", "yaml")

PROBE = """
import json, sys
sys.argv = {argv!r}
from {cli}.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in
                        ('pydantic', 'moon', 'maestro', 'ortools', 'yaml', 'nats', 'rich'))))
"""


def _imported(cli: str, *args: str, home: Path) -> set[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL",)}
    env["MAESTRO_HOME"] = str(home)
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=[cli, *args], cli=cli)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
                          check=False)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("argv", [("moon", "--help"), ("maestro", "--help"),
                                  ("moon", "list", "--status", "running", "--json")])
def test_help_and_list_import_nothing_heavy(argv: tuple[str, ...], tmp_path: Path) -> None:
    """`moon list` with no stack parses its options (typer's pydantic path would import
    pydantic here) and stops at the connection: nothing of the engine, solver or YAML."""
    found = _imported(*argv, home=tmp_path)
    heavy = {m for m in found if m.split(".")[0] in HEAVY or m in HEAVY}
    assert not heavy, heavy
    if argv[1] == "--help":
        assert not any(m.startswith("nats") for m in found)
    assert not any(m.startswith("rich") for m in found)  # list prints plain lines


def test_plain_options_keep_typers_checks(tmp_path: Path) -> None:
    """A bad number is still one line and exit 2, a good one still parsed (streams/cli_params)."""
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env["MAESTRO_HOME"] = str(tmp_path)
    bad = subprocess.run([sys.executable, "-c", "from moon.cli import main; main()", "worker",
                          "--id", "x", "-c", "a", "--capacity", "many"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=60, check=False)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert "'many' is not a valid integer" in bad.stderr


def test_plain_coercion_matches_typers_for_our_types() -> None:
    info = OptionInfo()
    assert _coercer(int, info)("3", None, None) == 3  # type: ignore[misc]
    assert _coercer(float, info)("0.5", None, None) == 0.5  # type: ignore[misc]
    assert _coercer(Path, info)("a/b", None, None) == Path("a/b")  # type: ignore[misc]
    assert _coercer(list[str], info)(("a", "b"), None, None) == ["a", "b"]  # type: ignore[misc]
    assert _coercer(bool, info)("yes", None, None) is True  # type: ignore[misc]
    assert _coercer(int, OptionInfo(min=1)) is None  # ranges: typer's own adapters
