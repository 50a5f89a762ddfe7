"""One JetStream publish of a message with a `Nats-Msg-Id`, asked again while a clustered
stream is still proposing another copy of the same id.

On an R3 stream the leader stages a message id when it proposes the message, and a second
publish under that id before the proposal applies is answered 409, err_code 10158 ("duplicate
message id is in process", JSStreamDuplicateMessageConflict), not with a duplicate ack. Two
engines deciding the same command, an engine sending again the orders of a decision another
engine journaled a moment before, a gate's audit record written again by the engine that took
its mark over: each is the same write twice, and the first copy may yet be stored. So 10158 is
not a refusal: asked again a moment later, the server answers what it answers any duplicate
(a duplicate ack with the first copy's sequence, or, for an append that names an expected
sequence, a wrong-last-sequence the journal reads as its own, streams/jetstream_store.py). A
single node answers a duplicate at once and never says 10158.

Every publish with a `Nats-Msg-Id` goes through `publish_once`, so none can raise it at a
caller that would take it for the broker refusing the write.
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError

__all__ = ["IN_PROCESS", "IN_PROCESS_TRIES", "publish_once"]

IN_PROCESS = 10158  # JSStreamDuplicateMessageConflict
# A proposal applies in a replication round trip (milliseconds); an id whose first copy never
# applies stays staged much longer (nats-server keeps it for its duplicate window), and after
# about 1.5 s the caller gets the error to handle as a broker away.
IN_PROCESS_TRIES = 12
_FIRST_WAIT_S, _LONGEST_WAIT_S = 0.005, 0.25


async def publish_once(js: JetStreamContext, subject: str, data: bytes, *,
                       headers: dict[str, str]) -> PubAck:
    """`js.publish(subject, data, headers=headers)`, headers holding a `Nats-Msg-Id`."""
    wait = _FIRST_WAIT_S
    for _ in range(IN_PROCESS_TRIES - 1):
        try:
            return await js.publish(subject, data, headers=dict(headers))
        except APIError as error:
            if error.err_code != IN_PROCESS:
                raise
        await asyncio.sleep(wait)
        wait = min(2 * wait, _LONGEST_WAIT_S)
    return await js.publish(subject, data, headers=dict(headers))
