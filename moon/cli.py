"""`moon …`: the command line of the durable workflow engine. Each command parses, wires, prints."""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.text import Text

from streams.broker import connect, home_dir
from streams.catalog import CODECS
from streams.codec import Undecodable
from streams.config import (
    WORKFLOWS,
    Topology,
    ensure_streams,
    replicas_from_env,
    space_from_env,
)
from streams.logs import configure_logging
from streams.tail import Row, TailError, parse_since, rows, to_json_line

__all__ = ["app", "main"]

app = typer.Typer(help="MOON: durable workflows on NATS JetStream.", no_args_is_help=True)
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="embedded broker data dir (default .maestro or MAESTRO_HOME)"),
]

@app.callback()
def _root() -> None:
    """MOON: durable workflows on NATS JetStream."""


_COLOURS = {"moon": "cyan", "audit": "magenta", "maestro": "green", "intent": "yellow"}


def _pretty(row: Row) -> Text:
    stamp = time.strftime("%H:%M:%S", time.localtime(row.time_ms / 1000))
    event = row.event
    kind = ""
    if isinstance(event, dict):
        events = event.get("events")
        if isinstance(events, list):
            kind = ", ".join(str(e.get("type", "?")) for e in events if isinstance(e, dict))
        else:
            kind = str(event.get("type") or event.get("outcome") or "")
    colour = _COLOURS.get(row.subject.split(".", 1)[0], "white")
    line = Text()
    line.append(f"{stamp} ", style="dim")
    line.append(f"#{row.seq:<6} ", style="bold")
    line.append(f"{row.subject:<40} ", style=colour)
    line.append(kind)
    return line


async def _tail(filter_: str, *, data_dir: Path | None, as_json: bool, **options: Any) -> int:
    out = Console(highlight=False)
    async with connect(data_dir=data_dir, name="moon-tail", role="operator") as nc:
        js = nc.jetstream()
        async for item in rows(js, filter_, codecs=CODECS, space=space_from_env(), **options):
            if isinstance(item, Undecodable):
                err.print(f"skipped #{item.seq} on {item.subject}: {item.error}", markup=False)
                continue
            if as_json:
                sys.stdout.buffer.write(to_json_line(item) + b"\n")
            else:
                out.print(_pretty(item))
        sys.stdout.flush()
    return 0


@app.command("tail")
def tail_command(
    subject_filter: Annotated[str, typer.Argument(help="e.g. 'audit.>' or 'moon.wf.w1.>'")],
    from_seq: Annotated[int | None, typer.Option("--from-seq", help="start at this stream sequence")] = None,  # noqa: E501
    since: Annotated[str | None, typer.Option("--since", help="e.g. 30s, 10m, 2h")] = None,
    last: Annotated[int | None, typer.Option("--last", help="only the last N messages")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new ones")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    data_dir: DataDir = None,
) -> None:
    """Print the messages on SUBJECT_FILTER: decoded, one per line."""
    try:
        since_ms = parse_since(since, int(time.time() * 1000)) if since else None
        code = asyncio.run(
            _tail(
                subject_filter, data_dir=data_dir, as_json=as_json, from_seq=from_seq,
                since_ms=since_ms, last=last, follow=follow,
            )
        )
    except TailError as error:
        err.print(f"moon tail: {error}", markup=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code)


# --- services -------------------------------------------------------------------------------


# A flag, not an environment variable: one port per process (several services share a host).
MetricsPort = Annotated[int | None, typer.Option(
    "--metrics-port",
    help="serve Prometheus /metrics on this port (0: any free one) of MAESTRO_METRICS_ADDR "
         "(default 127.0.0.1)")]


async def _serve(data_dir: Path | None, concurrency: int, metrics_port: int | None) -> int:
    from envelope.local import local_trust  # noqa: PLC0415 - keep `moon tail` start-up light
    from moon.engine import Engine  # noqa: PLC0415
    from moon.gateway import moon_gate  # noqa: PLC0415
    from moon.local import local_registry, local_walls  # noqa: PLC0415
    from moon.service import serve_engine  # noqa: PLC0415

    home = data_dir or home_dir()
    trust = local_trust(home)
    space = space_from_env()
    async with connect(data_dir=home, name="moon-engine", role="engine") as nc:
        js = nc.jetstream()
        await ensure_streams(js, Topology(space=space, replicas=replicas_from_env()))
        registry = await local_registry(js, space, trust)
        engine = Engine(nc, walls=local_walls(trust, writer=True), registry=registry,
                        space=space, concurrency=concurrency)
        gate = moon_gate(nc, engine, signer=trust.moon, trust=trust.trust_for(trust.moon))
        async with gate.serving():
            await serve_engine(engine, metrics_port=metrics_port)
        await registry.stop()
    return 0


@app.command("serve")
def serve_command(
    data_dir: DataDir = None,
    concurrency: Annotated[int, typer.Option(help="commands handled at once")] = 256,
    metrics_port: MetricsPort = None,
) -> None:
    """Run the engine: consume commands, journal decisions, send work orders and timers.
    Health: `health.moon-engine` and `$SRV.PING|INFO|STATS.moon-engine` over NATS."""
    configure_logging()
    try:
        raise typer.Exit(asyncio.run(_serve(data_dir, concurrency, metrics_port)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _worker(data_dir: Path | None, executor: str, capabilities: list[str],
                  command: list[str] | None, url: str | None, watts: float, capacity: int,
                  metrics_port: int | None) -> int:
    from moon.service import serve_worker  # noqa: PLC0415
    from moon.worker import Handler, Worker, http_handler, subprocess_handler  # noqa: PLC0415

    handler: Handler
    if command:
        handler = subprocess_handler(command)
    elif url:
        handler = http_handler(url)
    else:
        from moon.demo_handlers import echo  # noqa: PLC0415

        handler = echo
    from envelope.local import local_trust  # noqa: PLC0415
    from moon.local import register_local_executor  # noqa: PLC0415
    from streams.broker import provision_executor  # noqa: PLC0415
    from streams.roles import executor_role  # noqa: PLC0415

    home = data_dir or home_dir()
    space = space_from_env()
    # On this machine's stack the operator's key registers the executor's key (once per key)
    # and, on the embedded broker, gives it a user of its own; the worker then runs with that
    # user's rights alone. Elsewhere an operator does both beforehand.
    async with connect(data_dir=home, name=f"moon-register-{executor}", role="operator") as op:
        signer = await register_local_executor(
            op.jetstream(), space, local_trust(home), home, executor, capabilities=capabilities,
            now_ms=int(time.time() * 1000))
    if (home / "auth.conf").is_file():
        await asyncio.to_thread(provision_executor, home, executor, capabilities)
    async with connect(data_dir=home, name=f"moon-worker-{executor}",
                       role=executor_role(executor)) as nc:
        worker = Worker(nc, executor_id=executor, handlers=dict.fromkeys(capabilities, handler),
                        signer=signer, engines=local_trust(home).engines, space=space,
                        watts=watts, capacity=capacity)
        await serve_worker(worker, metrics_port=metrics_port)
    return 0


@app.command("worker")
def worker_command(
    executor: Annotated[str, typer.Option("--id", help="this executor's id")],
    capability: Annotated[list[str], typer.Option("--capability", "-c", help="repeatable")],
    command: Annotated[str | None, typer.Option("--exec", help="run this command per step (stdin: the order as JSON)")] = None,  # noqa: E501
    url: Annotated[str | None, typer.Option("--http", help="POST each step to this URL")] = None,
    watts: Annotated[float, typer.Option(help="declared power draw, for joules")] = 0.0,
    capacity: Annotated[int, typer.Option(help="steps run at once")] = 8,
    data_dir: DataDir = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Run an executor: take work orders for its capabilities, run them, report results.
    Health: `health.moon-worker` and `$SRV.PING|INFO|STATS.moon-worker` over NATS."""
    configure_logging()
    argv = shlex.split(command) if command else None
    try:
        raise typer.Exit(asyncio.run(
            _worker(data_dir, executor, capability, argv, url, watts, capacity, metrics_port)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# --- commands against the journal ------------------------------------------------------------


async def _gate(data_dir: Path | None, method: str, body: Any, *,
                request_id: str | None = None, name: str = "moon-admin") -> Any:
    """An operator's action goes through MOON's gate, signed with the data dir's operator key:
    checked and audited like any caller's, and retried safely (same request id, first answer)."""
    from moon.operator import operator_call  # noqa: PLC0415

    home = data_dir or home_dir()
    async with connect(data_dir=home, name=name, role="operator") as nc:
        return await operator_call(nc, home, space_from_env(), f"moon.{method}", body,
                                   request_id=request_id)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _dispatch(path: Path, data_dir: Path | None) -> Any:
    from moon.dispatch_file import load_dispatch  # noqa: PLC0415
    from moon.gateway import Budget, DispatchRequest  # noqa: PLC0415

    data = await asyncio.to_thread(path.read_bytes)
    now = int(time.time() * 1000)
    command = load_dispatch(data, now_ms=now)
    budget = None
    if command.budget_tokens is not None or command.deadline_ms is not None:
        budget = Budget(tokens=command.budget_tokens,
                        deadline_ms=command.deadline_ms - now if command.deadline_ms else None)
    request = DispatchRequest(steps=command.steps, workflow_id=command.workflow_id,
                              budget=budget, plan_id=command.plan_id,
                              plan_revision=command.plan_revision,
                              on_failure=command.on_failure)
    outcome = await _gate(data_dir, "dispatch", request, request_id=command.command_id,
                          name="moon-dispatch")
    return command.workflow_id, outcome


@app.command("dispatch")
def dispatch_command(
    file: Annotated[Path, typer.Argument(help="a DAG: JSON or YAML with `steps`")],
    data_dir: DataDir = None,
) -> None:
    """Dispatch a workflow from a file; prints its id (idempotent by the file's request id)."""
    from streams.replies import Refusal  # noqa: PLC0415

    _, outcome = _run(_dispatch(file, data_dir))
    if isinstance(outcome, Refusal):
        err.print(f"refused ({outcome.reason.value}, {outcome.code}): {outcome.detail}",
                  markup=False)
        raise typer.Exit(2)
    print(_json({"workflow_id": outcome.workflow_id, "version": outcome.version,
                 "status": outcome.status}))


def _reader_walls(data_dir: Path | None) -> Any:
    from envelope.local import local_trust  # noqa: PLC0415
    from moon.local import local_walls  # noqa: PLC0415

    return local_walls(local_trust(data_dir or home_dir()))


async def _load(workflow_id: str, data_dir: Path | None, upto: int | None = None) -> Any:
    """The workflow's verified journal; a message the engine did not sign stops the read with
    one line naming its sequence (the workflow is quarantined), never a traceback."""
    from moon.journal import journal  # noqa: PLC0415
    from streams.store import Unreadable  # noqa: PLC0415

    async with connect(data_dir=data_dir, name="moon-read", role="operator") as nc:
        try:
            return await journal(nc.jetstream(), space_from_env(),
                                 _reader_walls(data_dir)).read(workflow_id, upto=upto)
        except Unreadable as bad:
            err.print(f"moon: workflow {workflow_id} is quarantined: journal seq {bad.seq} "
                      f"does not verify ({bad.detail[:200]})", markup=False)
            raise typer.Exit(3) from None


def _state_table(state: Any) -> Any:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"{state.workflow_id}: {state.status}", title_justify="left")
    for column in ("step", "status", "attempt", "executor", "scheduled", "started", "tokens",
                   "error"):
        table.add_column(column)
    for name, step in state.steps.items():
        table.add_row(name, step.status, str(step.attempt), step.executor or "",
                      _clock(step.scheduled_at), _clock(step.started_at), str(step.usage.tokens),
                      (step.error or "")[:40])
    return table


def _clock(ms: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else ""


@app.command("status")
def status_command(
    workflow_id: str,
    watch: Annotated[bool, typer.Option("--watch", help="redraw live until it ends")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Steps, attempts and timings of one workflow."""
    from moon import replay  # noqa: PLC0415
    from moon.workflow import is_terminal  # noqa: PLC0415

    def current() -> Any:
        loaded = _run(_load(workflow_id, data_dir))
        if not loaded.items:
            err.print(f"moon status: unknown workflow {workflow_id!r}", markup=False)
            raise typer.Exit(1)
        return replay.fold([i.value for i in loaded.items])

    state = current()
    if as_json:
        print(_json(state))
        return
    if not watch:
        Console().print(_state_table(state))
        return
    from rich.live import Live  # noqa: PLC0415

    with Live(_state_table(state), refresh_per_second=4) as live:
        while not is_terminal(state):
            time.sleep(0.5)
            state = current()
            live.update(_state_table(state))


async def _list(data_dir: Path | None) -> list[Any]:
    from moon.engine import WorkflowSummary  # noqa: PLC0415

    async with connect(data_dir=data_dir, name="moon-list", role="operator") as nc:
        kv = await nc.jetstream().key_value(space_from_env().bucket(WORKFLOWS.name))
        try:
            keys = await kv.keys()
        except Exception:  # NoKeysError: an empty index
            return []
        out = []
        for key in keys:
            entry = await kv.get(key)
            if entry.value:
                out.append(msgspec.json.decode(entry.value, type=WorkflowSummary))
        return out


@app.command("list")
def list_command(
    status: Annotated[str | None, typer.Option(help="only workflows in this status")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Workflows from the index (a KV bucket), without scanning the journal."""
    from rich.table import Table  # noqa: PLC0415

    rows_ = [r for r in _run(_list(data_dir)) if status is None or r.status == status]
    rows_.sort(key=lambda r: r.updated_ms)
    if as_json:
        for r in rows_:
            print(_json(r))
        return
    table = Table()
    for column in ("workflow", "status", "done", "tokens", "version", "updated"):
        table.add_column(column)
    for r in rows_:
        table.add_row(r.workflow_id, r.status, f"{r.completed}/{r.steps}", str(r.tokens),
                      str(r.version), _clock(r.updated_ms))
    Console().print(table)


@app.command("replay")
def replay_command(
    workflow_id: str,
    to_seq: Annotated[int | None, typer.Option("--to-seq", help="fold up to this sequence")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="re-decide every command")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Fold the journal up to a stream sequence and print the state then."""
    from moon import replay  # noqa: PLC0415

    loaded = _run(_load(workflow_id, data_dir, upto=to_seq))
    if not loaded.items:
        err.print(f"moon replay: unknown workflow {workflow_id!r}", markup=False)
        raise typer.Exit(1)
    decisions = [i.value for i in loaded.items]
    state = replay.fold(decisions)
    mismatches = replay.verify(decisions) if verify else []
    if as_json:
        print(_json({"workflow_id": workflow_id, "seq": loaded.version, "state": state,
                     "verified": verify and not mismatches, "mismatches": mismatches}))
    else:
        Console().print(_state_table(state))
        print(f"folded {len(decisions)} decisions up to #{loaded.version}")
        if verify:
            print("verify: ok, every recorded command re-decides the same events"
                  if not mismatches else f"verify: {len(mismatches)} mismatches")
    if mismatches:
        raise typer.Exit(3)


@app.command("diff")
def diff_command(workflow_id: str, a: int, b: int, data_dir: DataDir = None) -> None:
    """What changed in a workflow between stream sequences A and B."""
    from moon import replay  # noqa: PLC0415

    loaded = _run(_load(workflow_id, data_dir, upto=max(a, b)))
    decisions = [(i.seq, i.value) for i in loaded.items]
    before = replay.fold(d for s, d in decisions if s <= min(a, b))
    after = replay.fold(d for s, d in decisions if s <= max(a, b))
    for change in replay.diff(before, after):
        print(_json(change))


async def _fork(workflow_id: str, at_seq: int, new_id: str, data_dir: Path | None) -> Any:
    from moon.gateway import ForkRequest  # noqa: PLC0415

    return await _gate(data_dir, "fork", ForkRequest(workflow_id=workflow_id, at_seq=at_seq,
                                                     new_workflow_id=new_id), name="moon-fork")


@app.command("fork")
def fork_command(
    workflow_id: str,
    at_seq: Annotated[int, typer.Option("--at-seq", help="the state to start from")],
    new_id: Annotated[str, typer.Option("--as", help="the new workflow's id")],
    data_dir: DataDir = None,
) -> None:
    """Start a new workflow from the state of WORKFLOW_ID at a stream sequence."""
    from streams.replies import Refusal  # noqa: PLC0415

    outcome = _run(_fork(workflow_id, at_seq, new_id, data_dir))
    if isinstance(outcome, Refusal):
        err.print(f"refused ({outcome.reason.value}): {outcome.detail}", markup=False)
        raise typer.Exit(2)
    print(_json({"workflow_id": new_id, "forked_from": workflow_id, "at_seq": at_seq}))


async def _command(workflow_id: str, kind: str, reason: str, data_dir: Path | None) -> Any:
    from moon.gateway import CancelRequest, CompensateRequest  # noqa: PLC0415

    request = (CompensateRequest if kind == "compensate" else CancelRequest)(
        workflow_id=workflow_id, reason=reason)
    return await _gate(data_dir, kind, request)


def _admin(workflow_id: str, kind: str, reason: str, data_dir: Path | None) -> None:
    from streams.replies import Refusal  # noqa: PLC0415

    outcome = _run(_command(workflow_id, kind, reason, data_dir))
    if isinstance(outcome, Refusal):
        err.print(f"refused ({outcome.reason.value}): {outcome.detail}", markup=False)
        raise typer.Exit(2)
    print(_json({"workflow_id": workflow_id, "status": outcome.status,
                 "version": outcome.version}))


@app.command("compensate")
def compensate_command(
    workflow_id: str, reason: str = "operator", data_dir: DataDir = None
) -> None:
    """Undo the completed steps of a workflow, dependants first."""
    _admin(workflow_id, "compensate", reason, data_dir)


@app.command("cancel")
def cancel_command(workflow_id: str, reason: str = "operator", data_dir: DataDir = None) -> None:
    """Stop scheduling new steps of a workflow."""
    _admin(workflow_id, "cancel", reason, data_dir)


def main() -> None:
    app()


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()
