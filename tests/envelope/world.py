"""A small world for envelope tests: an organisation root, a service, a caller and its grant."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from envelope.budget import MemoryLedger
from envelope.grants import Caveats, grant_ref, mint_grant
from envelope.keys import KeyRing, Signer, signer_from_seed
from envelope.seal import NonceCache, Opened, Trust, open_envelope, seal
from envelope.treaty import TreatyLimiter
from streams.replies import Refusal

NOW = 1_700_000_000_000
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def signer(name: str) -> Signer:
    return signer_from_seed(hashlib.sha256(name.encode()).digest())


class World:
    """Everything open_envelope needs, with a valid request sealable in one call."""

    def __init__(self, **trust: Any) -> None:
        self.root = signer("org-root")
        self.service = signer("service")
        self.caller = signer("caller")
        self.grant = mint_grant(
            self.root,
            audience=self.caller.did,
            capability="moon:*",
            not_before_ms=NOW - 3_600_000,
            expiry_ms=NOW + 3_600_000,
            nonce=b"g" * 16,
            caveats=Caveats(max_tokens=10_000, max_deadline_ms=60_000),
        )
        trust.setdefault("keys", KeyRing())
        trust.setdefault("revoked", set())
        self.trust = Trust(audience=self.service.did, roots=frozenset({self.root.did}), **trust)
        self.seen = NonceCache()
        self.limiter = TreatyLimiter()
        self.ledger = MemoryLedger()
        self.counter = 0

    def body(self, tokens: int = 100, deadline_ms: int = 5_000, **extra: Any) -> bytes:
        return msgspec.msgpack.encode(
            {
                "intent": "the conductor",
                "budget": {"tokens": tokens, "deadline_ms": deadline_ms},
                **extra,
            }
        )

    def seal(self, **overrides: Any) -> bytes:
        self.counter += 1
        args: dict[str, Any] = {
            "audience": self.service.did,
            "capability": "moon:dispatch",
            "body": self.body(),
            "grants": [self.grant],
            "grant": grant_ref(self.grant),
            "traceparent": TRACE,
            "request_id": f"req-{self.counter}",
            "nonce": self.counter.to_bytes(16, "big"),
            "now_ms": NOW,
        }
        args.update(overrides)
        by = args.pop("signer", self.caller)
        return seal(by, **args)

    def open(
        self, data: bytes, *, capability: str = "moon:dispatch", now_ms: int = NOW
    ) -> Opened | Refusal:
        return open_envelope(
            data,
            trust=self.trust,
            capability=capability,
            now_ms=now_ms,
            seen=self.seen,
            limiter=self.limiter,
            ledger=self.ledger,
        )
