"""Ed25519 identities as did:key: the name is the public key, so verifying needs no registry."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import base58
import msgspec
import nacl.bindings
import nacl.exceptions
import nacl.signing

__all__ = [
    "SMALL_ORDER_KEYS",
    "KeyFile",
    "KeyRing",
    "Signer",
    "acceptable_public_key",
    "did_from_public_key",
    "load_signer",
    "public_key_from_did",
    "save_signer",
    "signer_from_seed",
]

_DID_PREFIX = "did:key:z"
_ED25519_MULTICODEC = b"\xed\x01"  # varint(0xed) = 0xed 0x01

# The eight small-order points plus the non-canonical encodings of the same points (libsodium's
# blocklist). A signature "by" one of them can verify for many messages, so a caller could not be
# held to what it signed.
SMALL_ORDER_KEYS: frozenset[bytes] = frozenset(
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "0100000000000000000000000000000000000000000000000000000000000080",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    )
)


def did_from_public_key(raw: bytes) -> str:
    """did:key of a raw 32-byte Ed25519 public key (multicodec 0xed01, base58btc multibase)."""
    return _DID_PREFIX + base58.b58encode(_ED25519_MULTICODEC + raw).decode("ascii")


@functools.lru_cache(maxsize=4096)
def public_key_from_did(did: str) -> bytes | None:
    """The raw public key inside an Ed25519 did:key, or None when it is not one. Cached: the
    gate checks every envelope's kid with it, and base58 in Python is a fifth of that check."""
    if not did.startswith(_DID_PREFIX) or len(did) > 64:
        return None
    try:
        raw = base58.b58decode(did[len(_DID_PREFIX) :])
    except ValueError:
        return None
    if len(raw) != 34 or raw[:2] != _ED25519_MULTICODEC:
        return None
    return raw[2:]


def acceptable_public_key(raw: bytes) -> bool:
    """True for a canonical prime-order point: small-order keys are refused at registration."""
    if len(raw) != 32 or raw in SMALL_ORDER_KEYS:
        return False
    return bool(nacl.bindings.crypto_core_ed25519_is_valid_point(raw))


class Signer(msgspec.Struct, frozen=True):
    """A private signing identity; never encoded (the seed only goes to a 0600 key file)."""

    did: str
    key: nacl.signing.SigningKey

    def sign(self, message: bytes) -> bytes:
        return bytes(self.key.sign(message).signature)

    @property
    def public_key(self) -> bytes:
        return bytes(self.key.verify_key)


def signer_from_seed(seed: bytes) -> Signer:
    """A signer from 32 seed bytes; the shell supplies them (os.urandom), which keeps this pure."""
    key = nacl.signing.SigningKey(seed)
    return Signer(did=did_from_public_key(bytes(key.verify_key)), key=key)


class KeyRing(msgspec.Struct, frozen=True):
    """did -> VerifyKey. Registration validates once; lookups afterwards are a dict hit.

    With self_certifying=True an unregistered did:key is parsed, validated and cached on first use:
    the DID is the key, and authority still has to come from a grant chain rooted in a trusted key.
    """

    self_certifying: bool = True
    max_cached: int = 100_000
    known: dict[str, nacl.signing.VerifyKey] = {}

    def register(self, did: str) -> bool:
        """Add a did:key; False (and nothing stored) for a malformed DID or a small-order key."""
        raw = public_key_from_did(did)
        if raw is None or not acceptable_public_key(raw):
            return False
        if len(self.known) >= self.max_cached:
            # A flood of fresh self-certifying DIDs must not grow memory without bound.
            self.known.pop(next(iter(self.known)))
        self.known[did] = nacl.signing.VerifyKey(raw)
        return True

    def lookup(self, did: str) -> nacl.signing.VerifyKey | None:
        key = self.known.get(did)
        if key is None and self.self_certifying and self.register(did):
            key = self.known[did]
        return key


class KeyFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a key file holds: the DID (for humans and a consistency check) and the hex seed."""

    did: str
    seed: str


def save_signer(path: Path, signer: Signer) -> None:
    """Write a key file that is 0600 from creation: no window where others can read it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = msgspec.json.encode(KeyFile(did=signer.did, seed=bytes(signer.key).hex()))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data + b"\n")


def load_signer(path: Path) -> Signer:
    """Read a key file; raises ValueError if it is damaged or its DID does not match its seed."""
    try:
        stored = msgspec.json.decode(path.read_bytes(), type=KeyFile)
        signer = signer_from_seed(bytes.fromhex(stored.seed))
    except (msgspec.DecodeError, ValueError, nacl.exceptions.CryptoError) as error:
        raise ValueError(f"{path}: not a key file ({error})") from error
    if signer.did != stored.did:
        raise ValueError(f"{path}: DID does not match the seed")
    return signer
