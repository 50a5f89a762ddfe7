"""`moon tail`: every message once, exact starting points, garbage reported and skipped."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from streams.codec import Codec, Undecodable
from streams.tail import Row, TailError, parse_since, rows

from .sample import Batch

CODECS = {"MOON": Codec(Batch)}


async def _fill(js, space, n: int, *, garbage_at: set[int] = frozenset(),
                subject: str = "moon.wf.w{}.added") -> None:
    acks = []
    for i in range(n):
        data = (
            b"\x00garbage{"
            if i in garbage_at
            else json.dumps({"command": f"c{i}", "events": [{"type": "test.added", "n": i}]})
            .encode()
        )
        acks.append(await js.publish_async(space.subject(subject.format(i % 7)), data))
    await asyncio.gather(*acks)


async def _collect(js, space, **options) -> list:
    return [r async for r in rows(js, "moon.wf.>", codecs=CODECS, space=space, **options)]


async def test_tail_prints_all_10000_and_from_seq_starts_exactly_there(js, space):
    await _fill(js, space, 10_000)
    everything = await _collect(js, space)
    assert [r.seq for r in everything] == list(range(1, 10_001))
    assert everything[0].subject == "moon.wf.w0.added"
    assert everything[9_999].event["command"] == "c9999"
    later = await _collect(js, space, from_seq=9_990)
    assert [r.seq for r in later] == list(range(9_990, 10_001))


async def test_last_n_gives_the_newest_n(js, space):
    await _fill(js, space, 50)
    tail = await _collect(js, space, last=5)
    assert [r.seq for r in tail] == [46, 47, 48, 49, 50]


async def test_garbage_and_unknown_tags_are_reported_with_their_sequence_and_skipped(js, space):
    await _fill(js, space, 20, garbage_at={4})
    await js.publish(space.subject("moon.wf.w9.added"),
                     b'{"command":"x","events":[{"type":"test.nope"}]}')
    await _fill(js, space, 0)
    got = await _collect(js, space)
    bad = [g for g in got if isinstance(g, Undecodable)]
    good = [g for g in got if isinstance(g, Row)]
    assert [b.seq for b in bad] == [5, 21]
    assert "test.nope" in bad[1].error
    assert len(good) == 19


async def test_since_reads_from_a_time(js, space):
    await _fill(js, space, 3)
    recent = await _collect(js, space, since_ms=0)
    assert [r.seq for r in recent] == [1, 2, 3]


async def test_follow_sees_new_messages(js, space):
    await _fill(js, space, 2)
    got: list = []

    async def reader():
        async for r in rows(js, "moon.wf.>", codecs=CODECS, space=space, follow=True):
            got.append(r)
            if len(got) == 4:
                return

    task = asyncio.ensure_future(reader())
    await asyncio.sleep(0)
    await js.publish(space.subject("moon.wf.x.added"), b'{"command":"n","events":[]}')
    await js.publish(space.subject("moon.wf.x.added"), b'{"command":"m","events":[]}')
    await asyncio.wait_for(task, 10)
    assert [r.seq for r in got] == [1, 2, 3, 4]


async def test_an_unknown_subject_is_a_one_line_error(js, space):
    with pytest.raises(TailError, match="no stream holds"):
        await _collect_filter(js, space, "nowhere.>")


async def _collect_filter(js, space, filter_):
    return [r async for r in rows(js, filter_, codecs=CODECS, space=space)]


def test_since_parses_units():
    assert parse_since("10m", 1_000_000) == 1_000_000 - 600_000
    assert parse_since("500ms", 1000) == 500
    with pytest.raises(TailError):
        parse_since("ten minutes", 0)


def _moon(args, nats_url, space):
    env = {**os.environ, "NATS_URL": nats_url, "MAESTRO_SPACE": space.prefix}
    return subprocess.run(
        [sys.executable, "-c", "from moon.cli import main; main()", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )


async def test_the_cli_prints_every_event_as_json_and_errors_in_one_line(js, space, nats_url):
    # INTENTS has no typed codec in the catalog: its rows print as plain JSON.
    await _fill(js, space, 10_000, garbage_at={99}, subject="intent.svc{}.go")
    done = await asyncio.to_thread(_moon, ["tail", "intent.>", "--json"], nats_url, space)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    assert len(lines) == 9_999
    first = json.loads(lines[0])
    assert set(first) == {"seq", "subject", "time", "event"}
    assert "skipped #100" in done.stderr
    start = await asyncio.to_thread(
        _moon, ["tail", "intent.>", "--json", "--from-seq", "9000"], nats_url, space
    )
    assert json.loads(start.stdout.splitlines()[0])["seq"] == 9000
    missing = await asyncio.to_thread(_moon, ["tail", "nowhere.>"], nats_url, space)
    assert missing.returncode == 5  # README: no such workflow or subjects
    assert missing.stderr.strip().count("\n") == 0
    assert "Traceback" not in missing.stderr
