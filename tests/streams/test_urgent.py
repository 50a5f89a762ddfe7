"""streams/urgent.py: a waiting caller's publishes leave at once, the rest on the flusher."""

from __future__ import annotations

from nats.aio.client import Client

from streams.urgent import urgent, write_through


async def test_an_urgent_publish_is_on_the_socket_before_the_flusher_runs(nc: Client) -> None:
    write_through(nc)
    write_through(nc)  # idempotent: one wrapper, not two
    sub = await nc.subscribe("urgent.test")
    await nc.flush()
    await nc.publish("urgent.test", b"coalesced")
    assert nc._pending_data_size > 0  # left for the flusher's next turn
    await nc.flush()
    with urgent():
        await nc.publish("urgent.test", b"now")
        assert nc._pending_data_size == 0  # written by the publish itself
    await nc.publish("urgent.test", b"coalesced again")
    assert nc._pending_data_size > 0  # outside the block: as before
    got = [(await sub.next_msg(timeout=5)).data for _ in range(3)]
    assert got == [b"coalesced", b"now", b"coalesced again"]  # in order, none lost
