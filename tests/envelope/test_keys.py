import stat
from pathlib import Path

import nacl.bindings
import pytest

from envelope.keys import (
    SMALL_ORDER_KEYS,
    KeyRing,
    acceptable_public_key,
    did_from_public_key,
    load_signer,
    public_key_from_did,
    save_signer,
    signer_from_seed,
)

# W3C CCG did-method-key test vector (test-vectors/ed25519-x25519.json): seed of 32 zero bytes.
VECTOR_DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


def test_the_did_of_the_zero_seed_is_the_w3c_test_vector() -> None:
    assert signer_from_seed(bytes(32)).did == VECTOR_DID


def test_a_did_round_trips_to_its_public_key() -> None:
    signer = signer_from_seed(b"\x07" * 32)
    assert public_key_from_did(signer.did) == signer.public_key
    assert did_from_public_key(signer.public_key) == signer.did


@pytest.mark.parametrize(
    "did",
    [
        "",
        "did:key:",
        "did:web:example.com",
        "did:key:zzzz",
        "did:key:z0OIl",
        VECTOR_DID[:-1],
        "did:key:z" + "1" * 200,
    ],
)
def test_what_is_not_an_ed25519_did_key_has_no_public_key(did: str) -> None:
    assert public_key_from_did(did) is None


def test_every_small_order_key_is_refused_at_registration() -> None:
    ring = KeyRing()
    for raw in SMALL_ORDER_KEYS:
        assert not acceptable_public_key(raw)
        assert not ring.register(did_from_public_key(raw))
    assert ring.known == {}


def test_a_point_off_the_prime_order_subgroup_is_refused() -> None:
    # The small-order point of order 8 added to a valid key makes a mixed-order point.
    good = signer_from_seed(b"\x01" * 32).public_key
    torsion = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
    mixed = nacl.bindings.crypto_core_ed25519_add(good, torsion)
    assert acceptable_public_key(good)
    assert not acceptable_public_key(mixed)


def test_a_self_certifying_ring_learns_a_valid_did_key_on_first_lookup() -> None:
    ring = KeyRing()
    assert ring.lookup(VECTOR_DID) is not None
    assert VECTOR_DID in ring.known
    assert KeyRing(self_certifying=False).lookup(VECTOR_DID) is None


def test_a_key_file_is_private_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "alice.json"
    signer = signer_from_seed(b"\x05" * 32)
    save_signer(path, signer)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signer(path).did == signer.did
    with pytest.raises(FileExistsError):
        save_signer(path, signer)


def test_a_damaged_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"did": "did:key:z6Mkx", "seed": "00"}')
    with pytest.raises(ValueError, match="not a key file"):
        load_signer(path)
