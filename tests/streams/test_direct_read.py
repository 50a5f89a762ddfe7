"""Journal reads are batched direct gets: in order, bounded, and with no consumer on the server."""

from __future__ import annotations

import asyncio
import time

from nats.js import api

from streams.jetstream_store import _stamp_ms, last_sequence, ordered_read


async def _stream(js, space, *, max_consumers: int = -1) -> tuple[str, str]:
    name = space.stream("READS")
    subjects = space.subject("reads.>")
    await js.add_stream(api.StreamConfig(name=name, subjects=[subjects], allow_direct=True,
                                         max_consumers=max_consumers))
    return name, space.subject("reads")


async def test_a_read_returns_the_matching_messages_in_order_between_its_bounds(nc, space):
    js = nc.jetstream()
    stream, base = await _stream(js, space)
    before = time.time_ns() // 1_000_000
    for i in range(300):
        await js.publish(f"{base}.{'a' if i % 3 else 'b'}", f"m{i}".encode(),
                         headers={"Nats-Msg-Id": f"id{i}"})
    after_ms = time.time_ns() // 1_000_000
    wanted = f"{base}.a"
    last = await last_sequence(js, stream, wanted)
    rows = await ordered_read(js, stream, wanted, after=10, upto=last, with_ids=True)
    expected = [i for i in range(300) if i % 3 and i + 1 > 10]
    assert [seq for seq, *_ in rows] == [i + 1 for i in expected]
    assert [(subject, data, msg_id) for _, subject, _, data, msg_id in rows] == [
        (wanted, f"m{i}".encode(), f"id{i}") for i in expected]
    assert all(before - 1 <= stamp <= after_ms + 1 for _, _, stamp, _, _ in rows)
    bounded = await ordered_read(js, stream, wanted, after=10, upto=20)
    assert [seq for seq, *_ in bounded] == [i + 1 for i in expected if i + 1 <= 20]


async def test_reads_need_no_consumer_so_a_stream_at_its_consumer_limit_still_reads(nc, space):
    # Two engines re-reading workflows at once met the server's consumer limit with ordered
    # consumers; a batch get makes none.
    js = nc.jetstream()
    stream, base = await _stream(js, space, max_consumers=1)
    await js.add_consumer(stream, api.ConsumerConfig(durable_name="only"))
    for i in range(5):
        await js.publish(f"{base}.x", str(i).encode())
    rows = await ordered_read(js, stream, f"{base}.x", after=0, upto=5)
    assert [data for *_, data in rows] == [b"0", b"1", b"2", b"3", b"4"]


async def test_a_read_of_a_subject_with_nothing_after_its_start_is_empty(nc, space):
    js = nc.jetstream()
    stream, base = await _stream(js, space)
    await js.publish(f"{base}.x", b"one")
    assert await ordered_read(js, stream, f"{base}.x", after=1, upto=1) == []
    assert await ordered_read(js, stream, f"{base}.none", after=0, upto=0) == []


def test_a_stamp_is_read_to_the_millisecond_with_or_without_a_fraction():
    assert _stamp_ms("2026-12-01T20:41:06.34608437Z") == 1796157666346
    assert _stamp_ms("2026-12-01T20:41:06Z") == 1796157666000
    assert _stamp_ms("2026-12-01T20:41:06.5Z") == 1796157666500


async def test_a_read_whose_last_message_was_deleted_ends_at_the_next_one_past_it(nc, space):
    # `upto` names a message deleted since (an old KV revision, a taken order): the server then
    # serves the next match past it, and the read is over, however much more the stream holds.
    js = nc.jetstream()
    stream, base = await _stream(js, space)
    for i in range(6):
        await js.publish(f"{base}.x", str(i).encode())
    await js.delete_msg(stream, 3)
    rows = await asyncio.wait_for(ordered_read(js, stream, f"{base}.x", after=1, upto=3), 10)
    assert [seq for seq, *_ in rows] == [2]
