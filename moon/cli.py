"""`moon …`: the command line of the durable workflow engine. Each command parses, wires, prints.

Only typer is imported at start-up (`moon --help` in well under 0.2 s): everything else is
imported by the command that needs it, and operator errors end as one line and an exit code
(streams.cli_errors; `--debug` shows tracebacks). The commands are all here; what they run is
in moon/cli_services.py (serve, worker) and moon/cli_journal.py (reads and the gate), and the
lazy stand-ins they share in moon/cli_lazy.py.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from moon.cli_journal import _command, _dispatch, _fork, _known, _list, _Read, _read
from moon.cli_lazy import configure_logging, connect, home_dir, space_from_env
from moon.cli_services import _serve, _worker
from streams.cli_errors import Exit, fail
from streams.cli_errors import run as run_cli
from streams.cli_params import install as _plain_options
from streams.loop import run as run_loop

if TYPE_CHECKING:
    from rich.console import Console

    from streams.tail import Row

__all__ = ["MetricsPort", "app", "configure_logging", "home_dir", "main"]

_plain_options()  # str/int/float/Path options without importing pydantic (streams/cli_params.py)


# Plain (click) help: rich's help renderer alone costs more than the 0.2 s `--help` budget.
app = typer.Typer(help="MOON: durable workflows on NATS JetStream.", no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="embedded broker data dir (default .maestro or MAESTRO_HOME)"),
]
SEQ_HELP = ("a stream sequence number, as `moon status` (journal #N) and `moon tail` print "
            "them: sequences count every message of the stream, not one workflow's events")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")] = False,
) -> None:
    """MOON: durable workflows on NATS JetStream."""


def _console(stderr: bool = False) -> Console:
    from rich.console import Console  # noqa: PLC0415

    return Console(stderr=stderr, highlight=False)


_COLOURS = {"moon": "cyan", "audit": "magenta", "maestro": "green", "intent": "yellow"}


def _pretty(row: Row) -> Any:
    from rich.text import Text  # noqa: PLC0415

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
    from streams.catalog import CODECS  # noqa: PLC0415
    from streams.codec import Undecodable  # noqa: PLC0415
    from streams.tail import rows, to_json_line  # noqa: PLC0415

    out, err = _console(), _console(stderr=True)
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
    """Print the messages on SUBJECT_FILTER: decoded, one per line, with their stream
    sequence (#N)."""
    from streams.tail import TailError, parse_since  # noqa: PLC0415

    try:
        since_ms = parse_since(since, int(time.time() * 1000)) if since else None
    except TailError as error:
        fail(f"tail: {error}", Exit.REFUSED)
    try:
        code = _run(
            _tail(
                subject_filter, data_dir=data_dir, as_json=as_json, from_seq=from_seq,
                since_ms=since_ms, last=last, follow=follow,
            )
        )
    except TailError as error:  # nothing holds those subjects
        fail(f"tail: {error}", Exit.UNKNOWN)
    raise typer.Exit(code)


# --- services -------------------------------------------------------------------------------


# A flag, not an environment variable: one port per process (several services share a host).
MetricsPort = Annotated[int | None, typer.Option(
    "--metrics-port",
    help="serve Prometheus /metrics on this port (0: any free one) of MAESTRO_METRICS_ADDR "
         "(default 127.0.0.1)")]


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
        raise typer.Exit(run_loop(_serve(data_dir, concurrency, metrics_port)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command("worker")
def worker_command(
    executor: Annotated[str, typer.Option("--id", help="this executor's id")],
    capability: Annotated[list[str], typer.Option("--capability", "-c", help="repeatable")],
    command: Annotated[str | None, typer.Option("--exec", help="run this command per step (stdin: the order as JSON)")] = None,  # noqa: E501
    url: Annotated[str | None, typer.Option("--http", help="POST each step to this URL")] = None,
    watts: Annotated[float, typer.Option(help="declared power draw, for joules")] = 0.0,
    capacity: Annotated[int, typer.Option(help="steps run at once")] = 8,
    eager: Annotated[bool, typer.Option(help="take the next order a completion schedules in its answer, not through WORK")] = True,  # noqa: E501
    data_dir: DataDir = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Run an executor: take work orders for its capabilities, run them, report results.
    Health: `health.moon-worker` and `$SRV.PING|INFO|STATS.moon-worker` over NATS."""
    configure_logging()
    argv = shlex.split(command) if command else None
    try:
        raise typer.Exit(run_loop(_worker(data_dir, executor, capability, argv, url, watts,
                                          capacity, metrics_port, eager=eager)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# --- commands against the journal ------------------------------------------------------------


def _run(coro: Any) -> Any:
    try:
        return run_loop(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _refused(outcome: Any) -> None:
    """A gate's refusal: one line, exit 2."""
    fail(f"refused ({outcome.reason.value}, {outcome.code}): {outcome.detail}", Exit.REFUSED)


@app.command("dispatch")
def dispatch_command(
    file: Annotated[Path, typer.Argument(help="a DAG, YAML or JSON: see examples/dag.yaml")],
    data_dir: DataDir = None,
) -> None:
    """Dispatch a DAG (no planning) from a file; prints its id (idempotent by the file's
    request id). For a goal file use `maestro run`."""
    from streams.replies import Refusal  # noqa: PLC0415

    _, outcome = _run(_dispatch(file, data_dir))
    if isinstance(outcome, Refusal):
        _refused(outcome)
    print(_json({"workflow_id": outcome.workflow_id, "version": outcome.version,
                 "status": outcome.status}))


def _quarantine_line(workflow_id: str, bad: tuple[int, str]) -> str:
    return (f"workflow {workflow_id} is quarantined: journal seq {bad[0]} does not verify "
            f"({bad[1]})")


def _width() -> int:
    import shutil  # noqa: PLC0415

    return shutil.get_terminal_size((80, 24)).columns


def _status_screen(workflow_id: str, read: _Read) -> Any:
    from moon import replay  # noqa: PLC0415
    from moon.screens import events_of, status_view  # noqa: PLC0415

    state = replay.fold(d for _, d in read.items)
    if not state.workflow_id:
        state = _replace(state, workflow_id=workflow_id)
    return state, status_view(state, events_of(read.items), width=_width(),
                              now_ms=int(time.time() * 1000), quarantined=read.bad,
                              items=read.items, pools=read.pools)


def _replace(value: Any, **changes: Any) -> Any:
    import msgspec  # noqa: PLC0415

    return msgspec.structs.replace(value, **changes)


@app.command("status")
def status_command(
    workflow_id: str,
    watch: Annotated[bool, typer.Option("--watch", help="redraw live until it ends")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="results decoded as text")] = False,
    data_dir: DataDir = None,
) -> None:
    """Steps with start, end and duration, results and errors, why it waits, and the journal's
    messages with their stream sequence (#N, what replay/fork/diff take). Exit 3 when its
    journal does not verify (quarantined)."""
    from moon.workflow import is_terminal  # noqa: PLC0415

    read = _known(_run(_read(workflow_id, data_dir, live=True)), workflow_id)
    if as_json:
        from moon import replay  # noqa: PLC0415
        from moon.screens import events_of, state_json  # noqa: PLC0415

        state = replay.fold(d for _, d in read.items)
        print(_json(state_json(state, events_of(read.items), quarantined=read.bad,
                               pools=read.pools)))
    elif not watch:
        _console().print(_status_screen(workflow_id, read)[1])
    else:
        from rich.live import Live  # noqa: PLC0415

        state, screen = _status_screen(workflow_id, read)
        with Live(screen, refresh_per_second=4, console=_console()) as live:
            while not is_terminal(state) and read.bad is None:
                time.sleep(0.5)
                read = _run(_read(workflow_id, data_dir, live=True))
                state, screen = _status_screen(workflow_id, read)
                live.update(screen)
    if read.bad is not None:
        if as_json or watch:
            sys.stderr.write(f"moon: {_quarantine_line(workflow_id, read.bad)}\n")
        raise typer.Exit(Exit.JOURNAL)


def _status_filter(value: str | None) -> str | None:
    from moon.list_screen import LIST_STATUSES  # noqa: PLC0415

    if value is not None and value not in LIST_STATUSES:
        raise typer.BadParameter(f"{value!r} is not a status; one of {', '.join(LIST_STATUSES)}")
    return value


@app.command("list")
def list_command(
    status: Annotated[str | None, typer.Option(
        help="only workflows in this status: running, completed, failed, compensating, "
             "compensated, cancelled, quarantined", callback=_status_filter)] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Workflows from the index (a KV bucket), without scanning the journal; a quarantined
    one with why."""
    from moon.list_screen import list_lines  # noqa: PLC0415

    rows_ = [r for r in _run(_list(data_dir)) if status is None or r.get("status") == status]
    rows_.sort(key=lambda r: r.get("updated_ms", 0))
    if as_json:
        for r in rows_:
            print(_json(r))
        return
    if not rows_:
        print(f"no workflows{f' in status {status}' if status else ''} "
              "(dispatch one: moon dispatch examples/dag.yaml, or maestro run)")
        return
    import os  # noqa: PLC0415

    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    print("\n".join(list_lines(rows_, colour=colour)))


def _upto(read: _Read, workflow_id: str, seq: int, flag: str) -> list[tuple[int, Any]]:
    """The decisions at or before `seq`, or one line saying which numbers this workflow has."""
    if seq < 1:
        fail(f"{flag} {seq}: must be >= 1 ({SEQ_HELP})", Exit.REFUSED)
    kept = [(s, d) for s, d in read.items if s <= seq]
    if not kept and read.items:
        fail(f"workflow {workflow_id} has no journal message at or before seq {seq}: its "
             f"messages are #{read.items[0][0]}..#{read.version} ({flag} takes {SEQ_HELP})",
             Exit.UNKNOWN)
    return kept


@app.command("replay")
def replay_command(
    workflow_id: str,
    to_seq: Annotated[int | None, typer.Option("--to-seq", help=f"fold up to this: {SEQ_HELP}")] = None,  # noqa: E501
    verify: Annotated[bool, typer.Option("--verify", help="re-decide every command")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Fold the journal up to a stream sequence (as `moon status` prints them) and print the
    state then. Exit 3 when --verify finds a mismatch or the journal does not verify."""
    from moon import replay  # noqa: PLC0415
    from moon.screens import decoded, events_of, status_view  # noqa: PLC0415

    read = _known(_run(_read(workflow_id, data_dir)), workflow_id)
    items = read.items if to_seq is None else _upto(read, workflow_id, to_seq, "--to-seq")
    decisions = [d for _, d in items]
    state = replay.fold(decisions)
    mismatches = replay.verify(decisions) if verify else []
    version = items[-1][0] if items else 0
    if as_json:
        print(_json({"workflow_id": workflow_id, "seq": version, "state": decoded(state),
                     "verified": verify and not mismatches, "mismatches": mismatches,
                     "quarantined": read.bad and {"seq": read.bad[0], "detail": read.bad[1]}}))
    else:
        _console().print(status_view(state, events_of(items), width=_width(),
                                     quarantined=read.bad, items=items, hints=False))
        print(f"folded {len(decisions)} decisions up to #{version}")
        if verify:
            print("verify: ok, every recorded command re-decides the same events"
                  if not mismatches else f"verify: {len(mismatches)} mismatches")
    if mismatches or read.bad is not None:
        raise typer.Exit(Exit.JOURNAL)


@app.command("diff")
def diff_command(
    workflow_id: str,
    a: Annotated[int, typer.Argument(help=f"from: {SEQ_HELP}")],
    b: Annotated[int, typer.Argument(help="to: a stream sequence, like A")],
    data_dir: DataDir = None,
) -> None:
    """What changed in a workflow between stream sequences A and B (as `moon status` prints
    them), one JSON object per change."""
    from moon import replay  # noqa: PLC0415

    read = _known(_run(_read(workflow_id, data_dir)), workflow_id)
    lo, hi = min(a, b), max(a, b)
    _upto(read, workflow_id, hi, "diff B")
    before = replay.fold(d for s, d in read.items if s <= lo)
    after = replay.fold(d for s, d in read.items if s <= hi)
    for change in replay.diff(before, after):
        print(_json(change))


@app.command("fork")
def fork_command(
    workflow_id: str,
    at_seq: Annotated[int, typer.Option("--at-seq", help=f"the state to start from: {SEQ_HELP}")],
    new_id: Annotated[str, typer.Option("--as", help="the new workflow's id")],
    data_dir: DataDir = None,
) -> None:
    """Start a new workflow from the state of WORKFLOW_ID at a stream sequence (as `moon
    status` prints them)."""
    from streams.replies import Refusal  # noqa: PLC0415

    outcome = _run(_fork(workflow_id, at_seq, new_id, data_dir))
    if isinstance(outcome, Refusal):
        _refused(outcome)
    print(_json({"workflow_id": new_id, "forked_from": workflow_id, "at_seq": at_seq}))


def _admin(workflow_id: str, kind: str, reason: str, data_dir: Path | None) -> None:
    from streams.replies import Refusal  # noqa: PLC0415

    outcome = _run(_command(workflow_id, kind, reason, data_dir))
    if isinstance(outcome, Refusal):
        _refused(outcome)
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
    run_cli(app, "moon")


def _json(value: Any) -> str:
    import msgspec  # noqa: PLC0415

    return msgspec.json.encode(value).decode()
