"""The caller's side: seal, send (request/reply or durable intent) and verify the signed answer."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as Nats
from nats.js.api import PubAck

from envelope.grants import grant_ref
from envelope.keys import KeyRing, Signer
from envelope.seal import Response, open_response, seal
from envelope.trace import is_valid_traceparent, new_traceparent
from envelope.treaty import treaty_ref
from streams import telemetry
from streams.publish import publish_once
from streams.replies import Reason, Refusal
from streams.subjects import Space, intent, map_request

__all__ = ["Client", "Reply"]

T = TypeVar("T")
ROOT_SPACE = Space()


class Reply(msgspec.Struct, frozen=True):
    """An accepted, verified answer; `result` holds the service's reply Struct as msgpack."""

    response: Response

    @property
    def audit(self) -> str:
        return self.response.audit

    def result(self, type_: type[T]) -> T:
        return msgspec.msgpack.decode(self.response.result, type=type_)


class Client:
    """`await Client(nc, key, {"moon": moon_did}).call("moon.dispatch", body, grant=chain)`.

    `services` maps a service name to the DID it seals requests to and expects answers from.
    `grant` is the caller's grant chain, root first (SignedGrant bytes), per call or default.
    """

    def __init__(
        self,
        nc: Nats,
        key: Signer,
        services: Mapping[str, str],
        *,
        grant: Sequence[bytes] = (),
        treaty: bytes | None = None,
        space: Space = ROOT_SPACE,
        keys: KeyRing | None = None,
        timeout_s: float = 5.0,
        ttl_ms: int = 30_000,
        clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.nc = nc
        self.key = key
        self.services = dict(services)
        self.grant = tuple(grant)
        self.treaty = treaty
        self.space = space
        self.keys = keys if keys is not None else KeyRing()
        self.timeout_s = timeout_s
        self.ttl_ms = ttl_ms
        self._clock = clock
        self._random = random

    def seal(
        self,
        target: str,
        body: Any,
        *,
        capability: str | None = None,
        grant: Sequence[bytes] | None = None,
        request_id: str | None = None,
        traceparent: str | None = None,
        treaty: bytes | None = None,
    ) -> tuple[str, str, bytes]:
        """(request_id, traceparent, envelope bytes) for `service.method`; nothing is sent."""
        service, method = target.split(".", 1)
        chain = tuple(grant) if grant is not None else self.grant
        if not chain:
            raise ValueError("a call needs a grant chain")
        treaty = treaty if treaty is not None else self.treaty
        request_id = request_id or self._random(16).hex()
        # Sent from inside a span (a gate's handler calling on): the request joins its trace.
        traceparent = traceparent or telemetry.current_traceparent()
        if traceparent is None or not is_valid_traceparent(traceparent):
            traceparent = new_traceparent(self._random(24))
        data = seal(
            self.key, audience=self.services[service],
            capability=capability or f"{service}:{method}",
            body=body if isinstance(body, bytes) else msgspec.msgpack.encode(body),
            grants=chain, grant=grant_ref(chain[-1]), traceparent=traceparent,
            request_id=request_id, nonce=self._random(16), now_ms=self._clock(), ttl_ms=self.ttl_ms,
            treaty=treaty, treaty_ref=None if treaty is None else treaty_ref(treaty),
        )  # fmt: skip
        return request_id, traceparent, data

    async def call(self, target: str, body: Any, **options: Any) -> Reply | Refusal:
        """Request/reply on map.<service>.<method>; the answer is verified before it is believed."""
        request_id, traceparent, data = self.seal(target, body, **options)
        return await self.send(target, request_id, traceparent, data)

    async def send(
        self, target: str, request_id: str, traceparent: str, data: bytes
    ) -> Reply | Refusal:
        """Send sealed bytes (again, for a retry: the gate answers with the first outcome)."""
        service, method = target.split(".", 1)
        subject = self.space.subject(map_request(service, method))
        try:
            msg = await self.nc.request(
                subject, data, timeout=self.timeout_s, headers={"traceparent": traceparent}
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
            return Refusal(
                Reason.UNAVAILABLE,
                f"{subject}: {type(error).__name__}",
                retryable=True,
                retry_after_ms=500,
            )
        response = open_response(
            msg.data,
            issuer=self.services[service],
            keys=self.keys,
            caller=self.key.did,
            request_id=request_id,
            request=data,
        )
        if isinstance(response, Refusal):
            return response
        if response.refusal is not None:
            return msgspec.structs.replace(response.refusal, evidence={"audit": response.audit})
        return Reply(response)

    async def publish_intent(self, target: str, body: Any, **options: Any) -> tuple[str, PubAck]:
        """Fire-and-forget on intent.<service>.<method>: the publish ack is durable acceptance.

        Returns the request id: the outcome is in the audit stream under that id.
        """
        request_id, traceparent, data = self.seal(target, body, **options)
        service, method = target.split(".", 1)
        ack = await publish_once(
            self.nc.jetstream(), self.space.subject(intent(service, method)),
            data,
            headers={"traceparent": traceparent, "Nats-Msg-Id": request_id},
        )
        return request_id, ack
