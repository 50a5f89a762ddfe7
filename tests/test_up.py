"""`maestro up` as a user runs it: a process on free ports, the stack it prints reachable (NATS
for the CLIs, HTTP), a dispatch through the signed gate, and SIGTERM stops it all."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import free_port
from streams.logs import log_line

ROOT = Path(__file__).resolve().parents[1]


def _env(home: Path) -> dict[str, str]:
    """A user's shell: no test broker settings, the stack's data dir as MAESTRO_HOME."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NATS_URL", "NATS_NKEY", "MAESTRO_CREDS", "MAESTRO_SPACE")}
    env["MAESTRO_HOME"] = str(home)
    return env


def _cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", f"from {args[0]}.cli import main; main()",
                           *args[1:]], env=_env(home), capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=False)


@contextlib.contextmanager
def maestro_up(home: Path, tmp_path: Path, *, executors: bool = True
               ) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    """`maestro up` as a process on free ports, yielded once it printed `ready:`; stopped as a
    user stops it (SIGTERM) after the block if the block did not, and killed only if that hangs
    (a kill -9 would leave its broker behind, running)."""
    nats_port, http_port = free_port(), free_port()
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from maestro.cli import main; main()", "up", "--data-dir",
             str(home), "--port", str(nats_port), "--http-port", str(http_port),
             *(["--demo-executors"] if executors else [])],
            env=_env(home), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            start_new_session=True)  # a group of its own, as a terminal's foreground job
    try:
        deadline = time.monotonic() + 60
        while "ready:" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        yield proc, nats_port, http_port, log_path
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
@pytest.mark.usefixtures("server_binary")
def test_maestro_up_serves_the_stack_and_stops_on_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with maestro_up(home, tmp_path) as (proc, nats_port, http_port, log_path):
        printed = (tmp_path / "up.log").read_text()
        assert f"nats://127.0.0.1:{nats_port}" in printed
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/openapi.json") as answer:
            assert json.load(answer)["openapi"].startswith("3.")
        dispatched = _cli(["moon", "dispatch", str(ROOT / "examples" / "dag.yaml")], home)
        assert dispatched.returncode == 0, dispatched.stderr
        workflow = json.loads(dispatched.stdout)["workflow_id"]
        listed = _cli(["moon", "list", "--json"], home)
        assert listed.returncode == 0 and workflow in listed.stdout, listed.stderr
        # The operator's admin actions go through the gate sealed for what it asks of them
        # (moon:admin), not for `moon:<method>`: refused as no_capability before.
        version = next(row["version"] for row in map(json.loads, listed.stdout.splitlines())
                       if row["workflow_id"] == workflow)
        forked = _cli(["moon", "fork", workflow, "--at-seq", str(version), "--as",
                       f"{workflow}-again"], home)
        assert forked.returncode == 0, forked.stderr
        assert json.loads(forked.stdout)["forked_from"] == workflow
        undone = _cli(["moon", "compensate", f"{workflow}-again"], home)
        assert undone.returncode == 0, undone.stderr
        assert json.loads(undone.stdout)["workflow_id"] == f"{workflow}-again"
        # A goal, end to end: planned, allocated, dispatched through the gates, followed.
        ran = _cli(["maestro", "run", str(ROOT / "examples" / "goal.yaml"), "--json"], home)
        assert ran.returncode == 0, ran.stderr[-2000:]
        summary = json.loads(ran.stdout)
        assert summary["status"] == "completed" and summary["audit"].startswith("max://record/")
        assert summary["actual_makespan_ms"] > 0
        # Followed live: a line on stderr per step start and completion, every step named.
        goal_steps = {"gather-sources", "fetch-filings", "analyse", "draft", "fact-check",
                      "legal-review", "publish", "notify"}
        said = [line.split() for line in ran.stderr.splitlines() if "step_" in line]
        assert {w.split("=", 1)[1] for words in said for w in words if w.startswith("step=")} \
            >= goal_steps, ran.stderr[-2000:]
        # The README's Python example, as it is written.
        example = subprocess.run([sys.executable, str(ROOT / "examples" / "api_run.py"),
                                  str(home)], env=_env(home), capture_output=True, text=True,
                                 timeout=120, cwd=ROOT, check=False)
        assert example.returncode == 0, example.stdout + example.stderr[-2000:]
        # The README's executor example, as it is written: decorated functions, registered
        # with the stack and run through the gate's dispatch.
        served = subprocess.run([sys.executable, str(ROOT / "examples" / "executor.py"),
                                 str(home)], env=_env(home), capture_output=True, text=True,
                                timeout=120, cwd=ROOT, check=False)
        assert served.returncode == 0, served.stdout + served.stderr[-2000:]
        assert ": completed " in served.stdout and '"summary"' in served.stdout, served.stdout
        # The services talk: a line per step transition, in the stack's log.
        logged = log_path.read_text()
        said = {(log_line(line) or {}).get("event") for line in logged.splitlines()}
        for event in ("step_scheduled", "step_started", "step_completed", "workflow_completed"):
            assert event in said, logged[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "up.log").read_text()[-3000:]
    # Nothing left behind: the broker went with it, and a client says so in one line, without
    # starting one behind the user's back.
    after = _cli(["moon", "list"], home)
    assert after.returncode == 6 and "maestro up" in after.stderr, after.stderr
    assert len(after.stderr.splitlines()) == 1
    assert not (home / "nats.url").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("server_binary")
def test_ctrl_c_stops_the_stack_cleanly_and_takes_its_broker_with_it(tmp_path: Path) -> None:
    """A terminal's Ctrl-C is SIGINT to the whole foreground group: the broker must not die
    before the services using it (it did: 30 reconnect tracebacks in the log on every stop)."""
    home = tmp_path / "home"
    with maestro_up(home, tmp_path) as (proc, _, _, log_path):
        broker = int((home / "nats-server.pid").read_text())
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) in (0, 130), log_path.read_text()[-3000:]
    logged = log_path.read_text()
    assert "Traceback" not in logged and "encountered error" not in logged, logged[-3000:]
    deadline = time.monotonic() + 10
    while _alive(broker):
        assert time.monotonic() < deadline, "the broker outlived its stack"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
