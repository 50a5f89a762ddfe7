"""Operator errors, as an operator meets them: each CLI run as a process, one line on stderr,
the exit code the README documents, and no traceback (unless --debug). Also: README and
`--help` list the same commands, and `--help` imports none of the heavy modules."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from nats.js import JetStreamContext

from streams.cli_errors import Exit, OperatorError, run
from streams.subjects import Space
from tests.moon import fault_world as fw

ROOT = Path(__file__).resolve().parents[1]
CLIS = {"moon": "from moon.cli import main; main()",
        "maestro": "from maestro.cli import main; main()"}


def cli(name: str, *args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="80")
    base.pop("NATS_URL", None)
    return subprocess.run([sys.executable, "-c", CLIS[name], *args], check=False,
                          capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})}, cwd=cwd or ROOT)


def one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.returncode == code, (done.returncode, done.stderr)
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "broken.yaml").write_text("steps: [\n  - id: a\n")
    (tmp_path / "broken.json").write_text('{"name": "g", "steps": [')
    (tmp_path / "typo.yaml").write_text("steps:\n  - id: a\n    capabilty: x\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "bad-goal.yaml").write_text("name: g\nsteps:\n  - id: a\n    capabilty: x\n")
    unreadable = tmp_path / "secret.yaml"
    unreadable.write_text("steps: []\n")
    unreadable.chmod(0)
    return tmp_path


CASES = [
    # (cli, args, exit code, words in the line)
    ("moon", ["dispatch", "{d}/nope.yaml"], Exit.INPUT, ["no such file"]),
    ("moon", ["dispatch", "{d}"], Exit.INPUT, ["is a directory"]),
    ("moon", ["dispatch", "{d}/broken.yaml"], Exit.INPUT, ["not valid YAML", "line 2"]),
    ("moon", ["dispatch", "{d}/typo.yaml"], Exit.INPUT, ["not a DAG", "capabilty"]),
    ("moon", ["dispatch", "{d}/list.yaml"], Exit.INPUT, ["not a DAG"]),
    ("moon", ["dispatch", "examples/goal.yaml"], Exit.INPUT, ["goal file", "maestro run",
                                                             "maestro plan"]),
    ("moon", ["list", "--status", "bogus"], Exit.REFUSED, ["--status", "running", "quarantined"]),
    ("moon", ["replay", "wf-1", "--to-seq", "five"], Exit.REFUSED, ["--to-seq"]),
    ("moon", ["status", "not an id!"], Exit.REFUSED, ["not a workflow id"]),
    ("moon", ["tail", "x", "--since", "soon"], Exit.REFUSED, ["--since"]),
    ("moon", ["bogus"], Exit.REFUSED, ["No such command"]),
    ("maestro", ["plan", "{d}/nope.yaml"], Exit.INPUT, ["no such file"]),
    ("maestro", ["plan", "{d}/broken.json"], Exit.INPUT, ["goal", "decode"]),
    ("maestro", ["plan", "{d}/bad-goal.yaml"], Exit.INPUT, ["capabilty"]),
    ("maestro", ["plan", "examples/goal.yaml", "--offers", "{d}/nope.yaml"], Exit.INPUT,
     ["offers", "no such file"]),
    ("maestro", ["plan", "examples/goal.yaml", "--time-limit", "-1"], Exit.REFUSED,
     ["--time-limit"]),
    ("maestro", ["plan"], Exit.REFUSED, ["GOAL"]),
    ("maestro", ["explain", "{d}/nope.yaml"], Exit.INPUT, ["no such file"]),
    ("maestro", ["plan", "--psplib", "{d}/nope.sm"], Exit.INPUT, ["no such file"]),
]
if os.geteuid() != 0:  # root reads a file whatever its mode
    CASES.append(("moon", ["dispatch", "{d}/secret.yaml"], Exit.INPUT, ["permission denied"]))


@pytest.mark.parametrize(("name", "args", "code", "words"), CASES,
                         ids=[" ".join([c[0], *c[1]]) for c in CASES])
def test_an_operator_error_is_one_line_and_its_exit_code(
        files: Path, name: str, args: list[str], code: int, words: list[str]) -> None:
    one_line(cli(name, *(a.format(d=files) for a in args)), code, *words)


def test_debug_shows_the_traceback(files: Path) -> None:
    done = cli("moon", "--debug", "dispatch", str(files / "nope.yaml"))
    assert done.returncode != 0 and "Traceback" in done.stderr


async def test_unknown_workflows_and_sequences_are_refused(
        js: JetStreamContext, nats_url: str, space: Space) -> None:
    env = fw._env(nats_url, space)

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(cli, "moon", *args, env=env)

    for args in (["diff", "wf-nope", "1", "2"], ["status", "wf-nope"], ["status", "wf-nope",
                 "--json"], ["replay", "wf-nope", "--to-seq", "5"]):
        one_line(await run(*args), Exit.UNKNOWN, "unknown workflow", "wf-nope")

    # An index with nothing in it is an empty list, not an error (moon list's one watcher).
    empty = await run("list", "--json")
    assert empty.returncode == 0 and empty.stdout == "", empty.stderr
    assert (await run("list")).stdout.startswith("no workflows")


# --- README and --help agree; --help is light --------------------------------------------------

def help_commands(name: str) -> set[str]:
    done = cli(name, "--help")
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("Commands:", 1)[1]
    return {line.split()[0] for line in listed.splitlines() if line.startswith("  ") and
            line.split() and not line.startswith("   ")}


def readme_commands(name: str) -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(rf"`{name} ([a-z]+)", section))


@pytest.mark.parametrize("name", sorted(CLIS))
def test_readme_and_help_list_the_same_commands(name: str) -> None:
    assert readme_commands(name) == help_commands(name)


def test_readme_documents_every_exit_code() -> None:
    section = (ROOT / "README.md").read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    for code in Exit:
        assert re.search(rf"^\| {int(code)} \|", section, re.M), code


@pytest.mark.parametrize("name", sorted(CLIS))
def test_help_imports_no_broker_client_no_rich_no_crypto(name: str) -> None:
    probe = (f"import sys; sys.argv = ['{name}', '--help']\n"
             f"try:\n    {CLIS[name]}\nexcept SystemExit:\n    pass\n"
             "heavy = ('nats', 'asyncio', 'rich', 'structlog', 'msgspec', 'envelope.cli', "
             "'ortools', 'yaml')\n"
             "print('HEAVY', sorted(m for m in heavy if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], check=False,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.stdout.splitlines()[-1] == "HEAVY []", done.stdout[-500:]


def _app_raising(error: BaseException) -> typer.Typer:
    app = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False)

    @app.command()
    def go() -> None:
        raise error

    @app.command()
    def other() -> None:
        """A second command, so `go` is a sub-command."""

    return app


@pytest.mark.parametrize(("error", "code", "words"), [
    (RuntimeError("boom"), Exit.INTERNAL, ["internal error: RuntimeError: boom", "--debug"]),
    (ConnectionRefusedError(111, "refused"), Exit.UNREACHABLE, ["no broker answers", "NATS_URL"]),
    (TimeoutError(), Exit.UNREACHABLE, ["timed out"]),
    (OperatorError("bad file", Exit.INPUT), Exit.INPUT, ["bad file"]),
])
def test_any_other_error_is_still_one_line(capsys: pytest.CaptureFixture[str],
                                           error: Exception, code: int, words: list[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        run(_app_raising(error), "x", ["go"])
    assert ended.value.code == code
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and all(w in line for w in words), line
    with pytest.raises(type(error)):
        run(_app_raising(error), "x", ["go", "--debug"])
