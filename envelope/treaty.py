"""Treaties: two organisations countersign the scope and rate under which one calls the other."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Container

import msgspec
import nacl.exceptions

from envelope.grants import covers, pae
from envelope.keys import KeyRing, Signer
from streams.replies import Reason, Refusal

__all__ = [
    "TREATY_TYPE",
    "Bucket",
    "SignedTreaty",
    "Treaty",
    "TreatyLimiter",
    "admit",
    "check_scope",
    "check_treaty",
    "countersign",
    "propose_treaty",
    "rate_refusal",
    "take",
    "treaty_ref",
    "verify_treaty",
]

TREATY_TYPE = b"application/vnd.maestro.treaty.v1+msgpack"


class Treaty(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str  # root DID of the organisation whose services are called (one of our trusted roots)
    partner: str  # root DID of the calling organisation; its grant chains are honoured inside scope
    scope: tuple[str, ...]  # capabilities, wildcards allowed (`moon:*`)
    rate_per_s: float
    burst: int
    not_before_ms: int
    expiry_ms: int
    nonce: bytes


class SignedTreaty(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    payload: bytes
    host_sig: bytes
    partner_sig: bytes


class VerifiedTreaty(msgspec.Struct, frozen=True):
    ref: bytes
    terms: Treaty


_encode = msgspec.msgpack.Encoder().encode
_signed = msgspec.msgpack.Decoder(SignedTreaty)
_terms = msgspec.msgpack.Decoder(Treaty)


def treaty_ref(signed: bytes) -> bytes:
    """sha256 of the treaty terms: what an envelope header and the revocation set name."""
    return hashlib.sha256(_signed.decode(signed).payload).digest()


def propose_treaty(host: Signer, terms: Treaty) -> bytes:
    """The host organisation signs first; the result still lacks the partner's countersignature."""
    payload = _encode(terms)
    return _encode(SignedTreaty(payload, host.sign(pae(TREATY_TYPE, payload)), b""))


def countersign(partner: Signer, proposal: bytes) -> bytes:
    signed = _signed.decode(proposal)
    return _encode(
        SignedTreaty(
            signed.payload, signed.host_sig, partner.sign(pae(TREATY_TYPE, signed.payload))
        )
    )


def verify_treaty(
    data: bytes,
    *,
    roots: Container[str],
    keys: KeyRing,
    revoked: Container[bytes],
    now_ms: int,
    skew_ms: int,
) -> VerifiedTreaty | Refusal:
    """Both signatures hold, the host is one of our roots, the treaty is current and not revoked."""
    try:
        signed = _signed.decode(data)
        terms = _terms.decode(signed.payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        return Refusal(Reason.MALFORMED, f"treaty: {error}")
    ref = hashlib.sha256(signed.payload).digest()
    if terms.host not in roots:
        return Refusal(Reason.OUTSIDE_TREATY, f"treaty host is not trusted here: {terms.host}")
    message = pae(TREATY_TYPE, signed.payload)
    for did, sig in ((terms.host, signed.host_sig), (terms.partner, signed.partner_sig)):
        key = keys.lookup(did)
        try:
            if key is None:
                raise nacl.exceptions.BadSignatureError
            key.verify(message, sig)
        except nacl.exceptions.CryptoError:
            return Refusal(Reason.OUTSIDE_TREATY, f"treaty is not signed by {did}")
    if ref in revoked:
        return Refusal(Reason.GRANT_REVOKED, f"treaty {ref.hex()} is revoked")
    if now_ms > terms.expiry_ms + skew_ms:
        return Refusal(Reason.EXPIRED, "treaty expired", retryable=True)
    if now_ms < terms.not_before_ms - skew_ms:
        return Refusal(Reason.NOT_YET_VALID, "treaty not yet in force", retryable=True)
    return VerifiedTreaty(ref=ref, terms=terms)


class Bucket(msgspec.Struct, frozen=True):
    tokens: float
    at_ms: int


def take(
    bucket: Bucket | None, *, rate_per_s: float, burst: int, now_ms: int
) -> tuple[Bucket, int]:
    """Token bucket step: the new bucket, and 0 if admitted or else the ms until a token exists."""
    if bucket is None:
        bucket = Bucket(tokens=float(burst), at_ms=now_ms)
    elapsed_s = max(0, now_ms - bucket.at_ms) / 1000
    tokens = min(float(burst), bucket.tokens + elapsed_s * rate_per_s)
    if tokens >= 1:
        return Bucket(tokens - 1, now_ms), 0
    wait = math.inf if rate_per_s <= 0 else (1 - tokens) / rate_per_s * 1000
    return Bucket(tokens, now_ms), int(min(wait, 86_400_000)) + 1


class TreatyLimiter(msgspec.Struct, frozen=True):
    """One token bucket per key (treaty ref); the only mutable state of the treaty check."""

    buckets: dict[bytes, Bucket] = {}

    def admit(self, key: bytes, *, rate_per_s: float, burst: int, now_ms: int) -> int:
        bucket, wait_ms = take(
            self.buckets.get(key), rate_per_s=rate_per_s, burst=burst, now_ms=now_ms
        )
        self.buckets[key] = bucket
        return wait_ms


def admit(limiter: TreatyLimiter, treaty: VerifiedTreaty, now_ms: int) -> int:
    return limiter.admit(
        treaty.ref, rate_per_s=treaty.terms.rate_per_s, burst=treaty.terms.burst, now_ms=now_ms
    )


def check_treaty(
    treaty: VerifiedTreaty, capability: str, limiter: TreatyLimiter, now_ms: int
) -> Refusal | None:
    """Scope first (a call outside scope must not spend the partner's rate), then the rate."""
    if (refused := check_scope(treaty, capability)) is not None:
        return refused
    wait_ms = admit(limiter, treaty, now_ms)
    return rate_refusal(wait_ms) if wait_ms else None


def check_scope(treaty: VerifiedTreaty, capability: str) -> Refusal | None:
    if not any(covers(granted, capability) for granted in treaty.terms.scope):
        return Refusal(Reason.OUTSIDE_TREATY, f"{capability} is outside the treaty's scope")
    return None


def rate_refusal(wait_ms: int) -> Refusal:
    return Refusal(
        Reason.RATE_LIMITED, "treaty rate exceeded", retryable=True, retry_after_ms=wait_ms
    )
