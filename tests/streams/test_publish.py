"""`publish_once` (streams/publish.py): a message id still being proposed on a clustered
stream is asked again; any other answer is the caller's. The real case is in
tests/test_cluster_scale_out.py (two engines on two nodes); here the policy, with a
JetStream context that answers from a script."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.api import PubAck
from nats.js.errors import APIError

from streams.publish import IN_PROCESS, IN_PROCESS_TRIES, publish_once


class Scripted:
    def __init__(self, *answers: APIError | PubAck) -> None:
        self.answers, self.calls = list(answers), 0

    async def publish(self, subject: str, data: bytes, *, headers: dict[str, str]) -> PubAck:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, APIError):
            raise answer
        return answer


def in_process() -> APIError:
    return APIError(code=409, err_code=IN_PROCESS,
                    description="duplicate message id is in process")


async def test_an_id_still_in_process_is_asked_again_until_the_duplicate_ack() -> None:
    js: Any = Scripted(in_process(), in_process(), PubAck(stream="S", seq=7, duplicate=True))
    ack = await publish_once(js, "s", b"x", headers={"Nats-Msg-Id": "k"})
    assert (ack.seq, ack.duplicate, js.calls) == (7, True, 3)


async def test_another_refusal_is_raised_at_once() -> None:
    js: Any = Scripted(APIError(code=400, err_code=10071, description="wrong last sequence: 5"))
    with pytest.raises(APIError) as raised:
        await publish_once(js, "s", b"x", headers={"Nats-Msg-Id": "k"})
    assert (raised.value.err_code, js.calls) == (10071, 1)


async def test_an_id_that_stays_in_process_is_the_callers_after_a_bounded_wait() -> None:
    js: Any = Scripted(*(in_process() for _ in range(IN_PROCESS_TRIES)))
    with pytest.raises(APIError) as raised:
        await publish_once(js, "s", b"x", headers={"Nats-Msg-Id": "k"})
    assert (raised.value.err_code, js.calls) == (IN_PROCESS, IN_PROCESS_TRIES)
