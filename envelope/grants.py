"""Capability grants: signed, delegable only by narrowing, rooted in a trusted organisation key."""

from __future__ import annotations

import hashlib
from collections.abc import Container, Sequence

import msgspec
import nacl.exceptions

from envelope.keys import KeyRing, Signer
from streams.replies import Reason, Refusal

__all__ = [
    "GRANT_TYPE",
    "MAX_DEPTH",
    "NO_CAVEATS",
    "Caveats",
    "Chain",
    "Grant",
    "GrantCache",
    "SignedGrant",
    "covers",
    "delegate",
    "grant_ref",
    "mint_grant",
    "narrows",
    "pae",
    "verify_chain",
]

GRANT_TYPE = b"application/vnd.maestro.grant.v1+msgpack"
MAX_DEPTH = 3


def pae(payload_type: bytes, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: binds the type, so no kind verifies as another."""
    return b"DSSEv1 %d %b %d %b" % (len(payload_type), payload_type, len(payload), payload)


class Caveats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits a grant puts on its use; None means the grant itself sets no limit."""

    max_tokens: int | None = None
    max_deadline_ms: int | None = None
    # Opaque conditions for the service's policy (e.g. "intent:plan-only"); a child keeps them all.
    conditions: frozenset[str] = frozenset()


NO_CAVEATS = Caveats()


class Grant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    issuer: str
    audience: str
    capability: str
    caveats: Caveats
    not_before_ms: int
    expiry_ms: int
    parent: bytes | None  # grant_ref of the parent; None for a root grant
    nonce: bytes


class SignedGrant(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    payload: bytes  # the exact encoded Grant that was signed
    sig: bytes


class Chain(msgspec.Struct, frozen=True):
    """A verified chain, root first: what the envelope's caller may do and under which limits."""

    refs: tuple[bytes, ...]
    root: str
    capability: str
    caveats: Caveats


class GrantCache(msgspec.Struct, frozen=True):
    """grant_ref -> verified Grant: one signature check per grant, not one per request."""

    max_entries: int = 10_000
    verified: dict[bytes, Grant] = {}

    def remember(self, ref: bytes, grant: Grant) -> None:
        if len(self.verified) >= self.max_entries:
            self.verified.pop(next(iter(self.verified)))
        self.verified[ref] = grant


_encode = msgspec.msgpack.Encoder().encode
_signed = msgspec.msgpack.Decoder(SignedGrant)
_grant = msgspec.msgpack.Decoder(Grant)


def covers(granted: str, wanted: str) -> bool:
    """`moon:*` covers `moon:dispatch` and `moon:x:*`; `*` covers everything; otherwise equality."""
    if granted in (wanted, "*"):
        return True
    return granted.endswith(":*") and wanted.startswith(granted[:-1])


def narrows(child: Caveats, parent: Caveats) -> bool:
    """True when the child is at least as strict as its parent in every limit."""

    def within(mine: int | None, theirs: int | None) -> bool:
        return theirs is None or (mine is not None and mine <= theirs)

    return (
        within(child.max_tokens, parent.max_tokens)
        and within(child.max_deadline_ms, parent.max_deadline_ms)
        and child.conditions >= parent.conditions
    )


def grant_ref(signed: bytes) -> bytes:
    """sha256 of a grant's payload: how envelopes and revocations name the grant."""
    return hashlib.sha256(_signed.decode(signed).payload).digest()


def mint_grant(
    issuer: Signer,
    *,
    audience: str,
    capability: str,
    not_before_ms: int,
    expiry_ms: int,
    nonce: bytes,
    caveats: Caveats = NO_CAVEATS,
    parent: bytes | None = None,
) -> bytes:
    """Sign a grant; the result is SignedGrant bytes (a root grant when parent is None)."""
    payload = _encode(
        Grant(
            issuer=issuer.did,
            audience=audience,
            capability=capability,
            caveats=caveats,
            not_before_ms=not_before_ms,
            expiry_ms=expiry_ms,
            parent=parent,
            nonce=nonce,
        )
    )
    return _encode(SignedGrant(payload=payload, sig=issuer.sign(pae(GRANT_TYPE, payload))))


def delegate(
    holder: Signer,
    parent: bytes,
    *,
    audience: str,
    capability: str,
    not_before_ms: int,
    expiry_ms: int,
    nonce: bytes,
    caveats: Caveats = NO_CAVEATS,
) -> bytes:
    """Sub-grant from the holder of `parent`; verifiers check that it narrows."""
    return mint_grant(
        holder,
        audience=audience,
        capability=capability,
        caveats=caveats,
        not_before_ms=not_before_ms,
        expiry_ms=expiry_ms,
        nonce=nonce,
        parent=grant_ref(parent),
    )


def _verified(signed: bytes, keys: KeyRing, cache: GrantCache) -> tuple[bytes, Grant] | Refusal:
    try:
        outer = _signed.decode(signed)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        return Refusal(Reason.MALFORMED, f"grant: {error}")
    ref = hashlib.sha256(outer.payload).digest()
    if (grant := cache.verified.get(ref)) is not None:
        return ref, grant
    try:
        grant = _grant.decode(outer.payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        return Refusal(Reason.MALFORMED, f"grant: {error}")
    key = keys.lookup(grant.issuer)
    if key is None:
        return Refusal(Reason.NO_CAPABILITY, f"grant issuer has no usable key: {grant.issuer}")
    try:
        key.verify(pae(GRANT_TYPE, outer.payload), outer.sig)
    except nacl.exceptions.CryptoError:
        return Refusal(Reason.NO_CAPABILITY, "grant signature does not verify")
    cache.remember(ref, grant)
    return ref, grant


def verify_chain(
    grants: Sequence[bytes],
    *,
    leaf: bytes,
    caller: str,
    capability: str,
    roots: Container[str],
    revoked: Container[bytes],
    keys: KeyRing,
    cache: GrantCache,
    now_ms: int,
    skew_ms: int,
    max_depth: int = MAX_DEPTH,
) -> Chain | Refusal:
    """Check a root-first chain against the caller, the capability, the clock and revocations."""
    if not grants:
        return Refusal(Reason.NO_CAPABILITY, "no grant presented")
    if len(grants) > max_depth:
        return Refusal(Reason.NO_CAPABILITY, f"delegation deeper than {max_depth}")
    refs: list[bytes] = []
    previous: Grant | None = None
    root = ""
    for signed in grants:
        verified = _verified(signed, keys, cache)
        if isinstance(verified, Refusal):
            return verified
        ref, grant = verified
        if ref in revoked:
            return Refusal(Reason.GRANT_REVOKED, f"grant {ref.hex()} is revoked")
        if previous is None:
            if grant.parent is not None or grant.issuer not in roots:
                return Refusal(Reason.NO_CAPABILITY, f"chain root is not trusted: {grant.issuer}")
            root = grant.issuer
        else:
            if grant.parent != refs[-1] or grant.issuer != previous.audience:
                return Refusal(Reason.NO_CAPABILITY, "grant does not continue its parent")
            if not covers(previous.capability, grant.capability):
                return Refusal(Reason.NO_CAPABILITY, f"delegation widens {previous.capability}")
            if not narrows(grant.caveats, previous.caveats):
                return Refusal(Reason.NO_CAPABILITY, "delegation loosens caveats")
            if grant.not_before_ms < previous.not_before_ms or grant.expiry_ms > previous.expiry_ms:
                return Refusal(Reason.NO_CAPABILITY, "delegation outlives its parent")
        if now_ms > grant.expiry_ms + skew_ms:
            return Refusal(Reason.EXPIRED, f"grant {ref.hex()} expired", retryable=True)
        if now_ms < grant.not_before_ms - skew_ms:
            return Refusal(Reason.NOT_YET_VALID, f"grant {ref.hex()} not yet valid", retryable=True)
        refs.append(ref)
        previous = grant
    assert previous is not None
    if refs[-1] != leaf:
        return Refusal(Reason.NO_CAPABILITY, "signed grant reference does not match the chain")
    if previous.audience != caller:
        return Refusal(Reason.NO_CAPABILITY, "grant was given to someone else")
    if not covers(previous.capability, capability):
        return Refusal(
            Reason.NO_CAPABILITY, f"grant {previous.capability} does not cover {capability}"
        )
    return Chain(
        refs=tuple(refs), root=root, capability=previous.capability, caveats=previous.caveats
    )
