"""`moon …`: the command line of the durable workflow engine. Each command parses, wires, prints."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.text import Text

from streams.broker import connect
from streams.catalog import CODECS
from streams.codec import Undecodable
from streams.config import space_from_env
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
    async with connect(data_dir=data_dir, name="moon-tail") as nc:
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


def main() -> None:
    app()


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()
