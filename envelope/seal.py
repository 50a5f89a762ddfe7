"""Sealing and opening envelopes: sign exact bytes, verify before parsing, check in one order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Container, Sequence

import msgspec
import nacl.exceptions

from envelope.budget import Budget, Ledger, check_balance, check_caveats, read_budget
from envelope.grants import Chain, GrantCache, pae, verify_chain
from envelope.keys import KeyRing, Signer, public_key_from_did
from envelope.trace import is_valid_traceparent
from envelope.treaty import (
    TreatyLimiter,
    VerifiedTreaty,
    check_scope,
    rate_refusal,
    verify_treaty,
)
from streams.audit import Outcome
from streams.ids import check_id
from streams.replies import Reason, Refusal

__all__ = [
    "ENVELOPE_TYPE",
    "REPLAYED",
    "RESPONSE_TYPE",
    "VERSION",
    "Header",
    "NonceCache",
    "Opened",
    "Pending",
    "Policy",
    "Response",
    "Trust",
    "Wire",
    "admit",
    "allow_all",
    "block",
    "check_envelope",
    "open_envelope",
    "open_response",
    "request_hash",
    "seal",
    "seal_response",
]

ENVELOPE_TYPE = b"application/vnd.maestro.envelope.v1+msgpack"
RESPONSE_TYPE = b"application/vnd.maestro.response.v1+msgpack"
VERSION = 1


class Header(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the caller signs about the request; the body rides next to it as raw bytes."""

    v: int
    caller: str
    audience: str
    capability: str
    traceparent: str
    issued_at_ms: int
    expires_at_ms: int
    nonce: bytes
    request_id: str
    grant: bytes  # grant_ref of the leaf grant the caller invokes
    treaty: bytes | None = None  # ref of the treaty a cross-organisation call relies on


class Signed(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    header: Header
    body: msgspec.Raw  # exact msgpack bytes of the body, decoded by the service once
    grants: tuple[bytes, ...] = ()  # SignedGrant bytes, root first
    treaty: bytes | None = None  # SignedTreaty bytes


class Wire(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    kid: str  # unauthenticated lookup hint; checked against the signed caller afterwards
    payload: bytes  # encoded Signed: the exact bytes under the signature
    sig: bytes


class Opened(msgspec.Struct, frozen=True):
    """An envelope that passed every check; the service sees only this."""

    header: Header
    body: bytes
    request_hash: bytes
    chain: Chain
    budget: Budget | None
    treaty: bytes | None

    @property
    def caller(self) -> str:
        return self.header.caller

    @property
    def request_id(self) -> str:
        return self.header.request_id

    @property
    def traceparent(self) -> str:
        return self.header.traceparent


Policy = Callable[[Header, Chain], Refusal | None]


def allow_all(header: Header, chain: Chain) -> Refusal | None:
    return None


def block(
    *,
    callers: Container[str] = (),
    capabilities: Container[str] = (),
    conditions: Container[str] = (),
) -> Policy:
    """A deny-list policy; services can compose their own Policy callables the same way."""

    def policy(header: Header, chain: Chain) -> Refusal | None:
        if header.caller in callers:
            return Refusal(Reason.POLICY_BLOCK, "caller is blocked by policy")
        if header.capability in capabilities:
            return Refusal(Reason.POLICY_BLOCK, f"{header.capability} is blocked by policy")
        if any(c in conditions for c in chain.caveats.conditions):
            return Refusal(Reason.POLICY_BLOCK, "a grant condition is blocked by policy")
        return None

    return policy


class Trust(msgspec.Struct, frozen=True):
    """A service's static verification context; the live sets inside it may be updated in place."""

    audience: str  # this service's DID
    keys: KeyRing
    roots: frozenset[str]  # organisation root DIDs we accept as chain anchors
    revoked: Container[bytes] = frozenset()  # grant/treaty refs; a watcher may keep a live set here
    policy: Policy = allow_all
    grant_cache: GrantCache = msgspec.field(default_factory=GrantCache)
    max_bytes: int = 64 * 1024
    skew_ms: int = 30_000
    max_ttl_ms: int = 120_000
    max_depth: int = 3


class NonceCache(msgspec.Struct, frozen=True):
    """Seen (caller, nonce) keys until the envelope could no longer pass the time check anyway."""

    until: dict[bytes, int] = {}

    def __call__(self, key: bytes, keep_until_ms: int, now_ms: int) -> bool:
        """True if seen before; otherwise remember it. Expired entries are swept as we go."""
        if (expiry := self.until.get(key)) is not None and expiry >= now_ms:
            return True
        self.until[key] = keep_until_ms
        if len(self.until) % 1024 == 0:
            for stale in [k for k, v in self.until.items() if v < now_ms]:
                del self.until[stale]
        return False


Seen = Callable[[bytes, int, int], bool]

_encode = msgspec.msgpack.Encoder().encode
_wire = msgspec.msgpack.Decoder(Wire)
_signed = msgspec.msgpack.Decoder(Signed)


def request_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def seal(
    signer: Signer,
    *,
    audience: str,
    capability: str,
    body: bytes,
    grants: Sequence[bytes],
    grant: bytes,
    traceparent: str,
    request_id: str,
    nonce: bytes,
    now_ms: int,
    ttl_ms: int = 30_000,
    treaty: bytes | None = None,
    treaty_ref: bytes | None = None,
) -> bytes:
    """Encode once, sign PAE(type, payload) and ship those exact bytes. `body` is msgpack bytes."""
    header = Header(
        v=VERSION,
        caller=signer.did,
        audience=audience,
        capability=capability,
        traceparent=traceparent,
        issued_at_ms=now_ms,
        expires_at_ms=now_ms + ttl_ms,
        nonce=nonce,
        request_id=request_id,
        grant=grant,
        treaty=treaty_ref,
    )
    payload = _encode(Signed(header, msgspec.Raw(body), tuple(grants), treaty))
    return _encode(Wire(signer.did, payload, signer.sign(pae(ENVELOPE_TYPE, payload))))


def _claims(header: Header) -> dict[str, str]:
    # Only ever built after the signature held: this is what lets an audit name the caller.
    return {
        "caller": header.caller,
        "request_id": header.request_id,
        "capability": header.capability,
        "traceparent": header.traceparent,
    }


def _with(refusal: Refusal, evidence: dict[str, str]) -> Refusal:
    return msgspec.structs.replace(refusal, evidence={**refusal.evidence, **evidence})


class Pending(msgspec.Struct, frozen=True):
    """An envelope that passed every stateless check; what the stateful ones (replay, treaty
    rate, ledger) need to finish it. The gate runs those against shared KV state, open_envelope
    against in-process state: the same three steps in the same order (`admit`)."""

    opened: Opened
    nonce_key: bytes  # sha256(caller || nonce)
    keep_until_ms: int  # the envelope can no longer pass the time check after this
    treaty: VerifiedTreaty | None
    claims: dict[str, str]

    def refuse(self, refusal: Refusal) -> Refusal:
        return _with(refusal, self.claims)


REPLAYED = Refusal(Reason.REPLAYED, "nonce already seen")


def open_envelope(
    data: bytes,
    *,
    trust: Trust,
    capability: str,
    now_ms: int,
    seen: Seen,
    limiter: TreatyLimiter,
    ledger: Ledger,
) -> Opened | Refusal:
    """Every check, in the order of research/envelope.md §9; the first failure is the answer.

    `capability` is what the subject the bytes arrived on stands for. Refusals produced before the
    signature held carry no `caller` in their evidence: a forged request is never attributed.
    """
    pending = check_envelope(data, trust=trust, capability=capability, now_ms=now_ms)
    if isinstance(pending, Refusal):
        return pending
    return admit(pending, seen=seen, limiter=limiter, ledger=ledger, now_ms=now_ms)


def admit(
    pending: Pending, *, seen: Seen, limiter: TreatyLimiter, ledger: Ledger, now_ms: int
) -> Opened | Refusal:
    """The stateful checks on in-process state; envelope/shared.py has their KV twin."""
    # 10. replay: the key lives as long as the envelope could still pass step 9
    if seen(pending.nonce_key, pending.keep_until_ms, now_ms):
        return pending.refuse(REPLAYED)
    # 13. treaty rate
    if pending.treaty is not None and (
        wait_ms := limiter.admit(pending.treaty.ref, rate_per_s=pending.treaty.terms.rate_per_s,
                                 burst=pending.treaty.terms.burst, now_ms=now_ms)
    ):
        return pending.refuse(rate_refusal(wait_ms))
    # 14. the caller's balance; reserved only once everything else passed
    opened = pending.opened
    if (refused := check_balance(opened.budget, ledger.remaining(opened.caller))) is not None:
        return pending.refuse(refused)
    if opened.budget is not None and opened.budget.tokens:
        ledger.reserve(opened.caller, opened.budget.tokens)
    return opened


def check_envelope(
    data: bytes, *, trust: Trust, capability: str, now_ms: int
) -> Pending | Refusal:
    """The checks that need no state: size, decode, signature, header, audience, capability,
    time, grant chain, policy, treaty scope and budget caveats. Never raises on any bytes."""
    try:
        return _check_envelope(data, trust=trust, capability=capability, now_ms=now_ms)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError, TypeError,
            OverflowError) as error:
        # Every decoder above is guarded; this net is for bytes a decoder or key parser chokes
        # on in a way not foreseen: malformed, never an exception out of the gate.
        return Refusal(Reason.MALFORMED, f"{type(error).__name__}: {error}"[:200])


def _check_envelope(
    data: bytes, *, trust: Trust, capability: str, now_ms: int
) -> Pending | Refusal:
    # 1. size, before spending anything on the bytes
    if len(data) > trust.max_bytes:
        return Refusal(Reason.OVERSIZE, f"{len(data)} bytes > {trust.max_bytes}")
    # 2. outer decode
    try:
        wire = _wire.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        return Refusal(Reason.MALFORMED, str(error))
    # 3. key lookup (kid is a hint: it only chooses which key to try)
    if public_key_from_did(wire.kid) is None:
        return Refusal(Reason.MALFORMED, "kid is not an Ed25519 did:key")
    key = trust.keys.lookup(wire.kid)
    if key is None:
        return Refusal(Reason.UNKNOWN_KEY, "no acceptable key for kid")
    # 4. signature over the exact bytes; length checked so no exception type decides the outcome
    if len(wire.sig) != 64:
        return Refusal(Reason.BAD_SIGNATURE, "signature must be 64 bytes")
    try:
        key.verify(pae(ENVELOPE_TYPE, wire.payload), wire.sig)
    except nacl.exceptions.CryptoError:
        return Refusal(Reason.BAD_SIGNATURE, "signature does not verify")
    # 5. strict decode of what was signed
    try:
        signed = _signed.decode(wire.payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        return Refusal(Reason.MALFORMED, f"signed payload: {error}")
    header = signed.header
    # 6. the signer is who the header says; from here on a refusal may name the caller
    if header.caller != wire.kid:
        return Refusal(Reason.BAD_SIGNATURE, "kid and signed caller differ")
    if not is_valid_traceparent(header.traceparent):
        # The traceparent goes into NATS headers downstream: an invalid one is not repeated.
        return Refusal(Reason.MALFORMED, "header: traceparent",
                       evidence={**_claims(header), "traceparent": ""})
    claims = _claims(header)
    if (bad_id := check_id(header.request_id, "request_id")) is not None:
        # The id becomes a KV key and a Nats-Msg-Id: the gate audits this under the hash.
        return _with(bad_id, claims)
    if header.v != VERSION or len(header.nonce) < 12:
        return Refusal(Reason.MALFORMED, "header: version or nonce", evidence=claims)
    pending = _check_signed(header, signed, data, claims, trust=trust, capability=capability,
                            now_ms=now_ms)
    return _with(pending, claims) if isinstance(pending, Refusal) else pending


def _check_signed(
    header: Header,
    signed: Signed,
    data: bytes,
    claims: dict[str, str],
    *,
    trust: Trust,
    capability: str,
    now_ms: int,
) -> Pending | Refusal:
    # 7. audience
    if header.audience != trust.audience:
        return Refusal(Reason.WRONG_AUDIENCE, f"sealed for {header.audience}")
    # 8. the signed capability is the one this subject stands for
    if header.capability != capability:
        return Refusal(
            Reason.NO_CAPABILITY, f"sealed for {header.capability}, sent to {capability}"
        )
    # 9. time window, with bounded skew and bounded lifetime
    if header.expires_at_ms - header.issued_at_ms > trust.max_ttl_ms:
        return Refusal(Reason.EXPIRED, f"lifetime over {trust.max_ttl_ms} ms")
    if now_ms > header.expires_at_ms + trust.skew_ms:
        return Refusal(Reason.EXPIRED, "envelope expired", retryable=True)
    if now_ms < header.issued_at_ms - trust.skew_ms:
        return Refusal(Reason.NOT_YET_VALID, "issued in the future beyond clock skew")
    # (10. replay runs in `admit`, once the stateless checks held: a request that fails them
    # spends neither a nonce nor a treaty token, and replicas ask their shared store less.)
    # 11. grant chain (a foreign root counts only under a treaty signed by one of our roots)
    treaty: VerifiedTreaty | None = None
    roots: Container[str] = trust.roots
    if signed.treaty is not None:
        verified = verify_treaty(
            signed.treaty,
            roots=trust.roots,
            keys=trust.keys,
            revoked=trust.revoked,
            now_ms=now_ms,
            skew_ms=trust.skew_ms,
        )
        if isinstance(verified, Refusal):
            return verified
        if verified.ref != header.treaty:
            return Refusal(Reason.OUTSIDE_TREATY, "signed treaty reference does not match")
        treaty = verified
        roots = frozenset({verified.terms.partner})
    chain = verify_chain(
        signed.grants,
        leaf=header.grant,
        caller=header.caller,
        capability=header.capability,
        roots=roots,
        revoked=trust.revoked,
        keys=trust.keys,
        cache=trust.grant_cache,
        now_ms=now_ms,
        skew_ms=trust.skew_ms,
        max_depth=trust.max_depth,
    )
    if isinstance(chain, Refusal):
        return chain
    # 12. policy
    if (refused := trust.policy(header, chain)) is not None:
        return refused
    # 13. treaty scope (its rate runs in `admit`)
    if treaty is not None and (refused := check_scope(treaty, header.capability)) is not None:
        return refused
    # 14. budget, read from the signed body bytes, against the grant's caveats
    body = bytes(signed.body)
    budget = read_budget(body)
    if isinstance(budget, Refusal):
        return budget
    if (refused := check_caveats(budget, chain.caveats)) is not None:
        return refused
    opened = Opened(
        header=header,
        body=body,
        request_hash=request_hash(data),
        chain=chain,
        budget=budget,
        treaty=None if treaty is None else treaty.ref,
    )
    return Pending(
        opened=opened,
        nonce_key=request_hash(header.caller.encode() + header.nonce),
        keep_until_ms=header.expires_at_ms + trust.skew_ms,
        treaty=treaty,
        claims=claims,
    )


# Responses: sealed by the service so a caller can tell its answer from one forged on the broker.


class Response(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    v: int
    issuer: str  # the service DID, which the caller sealed its request to
    audience: str  # the verified caller, or "" when the request was never authenticated
    request_id: str
    request_hash: bytes
    outcome: Outcome
    audit: str  # max://record/<id>
    at_ms: int
    result: bytes = b""  # msgpack of the service's reply Struct when accepted
    refusal: Refusal | None = None


_response = msgspec.msgpack.Decoder(Response)


def seal_response(signer: Signer, response: Response) -> bytes:
    payload = _encode(response)
    return _encode(Wire(signer.did, payload, signer.sign(pae(RESPONSE_TYPE, payload))))


def open_response(
    data: bytes, *, issuer: str, keys: KeyRing, caller: str, request_id: str, request: bytes
) -> Response | Refusal:
    """Verify a reply was sealed by `issuer` and answers our request.

    A stored first answer to a re-sealed retry carries the first request's hash, so the link is
    (caller, request_id); a request refused before authentication is matched by its hash.
    """
    try:
        wire = _wire.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        return Refusal(Reason.MALFORMED, f"response: {error}")
    key = keys.lookup(issuer) if wire.kid == issuer else None
    if key is None:
        return Refusal(Reason.UNKNOWN_KEY, f"response not from {issuer}")
    try:
        key.verify(pae(RESPONSE_TYPE, wire.payload), wire.sig)
        response = _response.decode(wire.payload)
    except nacl.exceptions.CryptoError:
        return Refusal(Reason.BAD_SIGNATURE, "response signature does not verify")
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        return Refusal(Reason.MALFORMED, f"response: {error}")
    ours = (response.audience == caller and response.request_id == request_id) or (
        response.request_hash == request_hash(request)
    )
    if response.issuer != issuer or not ours:
        return Refusal(Reason.BAD_SIGNATURE, "response answers a different request")
    return response
