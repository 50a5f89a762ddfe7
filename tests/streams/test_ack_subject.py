"""The store reads sequence, time and pending off the ack subject; nats-py's parser agrees."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from streams.jetstream_store import _position

V1 = "$JS.ACK.t1_MOON.c1.1.4321.17.1700000000123456789.5"
V2 = "$JS.ACK._.ACCHASH.t1_MOON.c1.2.4321.17.1700000000123456789.0.r4nd0m"
V2_NO_TOKEN = "$JS.ACK.dom.ACCHASH.t1_MOON.c1.2.4321.17.1700000000123456789.9"


@pytest.mark.parametrize("reply", [V1, V2, V2_NO_TOKEN])
def test_position_matches_the_clients_metadata(reply):
    msg = Msg(_client=None, subject="x", reply=reply)  # type: ignore[arg-type]
    meta = msg.metadata
    seq, time_ms, pending = _position(msg)
    assert seq == meta.sequence.stream == 4321
    assert time_ms == int(meta.timestamp.timestamp() * 1000)
    assert pending == meta.num_pending
