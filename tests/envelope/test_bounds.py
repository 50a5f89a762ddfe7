"""open_envelope over hostile structure: whatever is signed or sent, it answers Opened or a
Refusal and never raises (random objects under a valid signature, mutated headers, truncations).
The crafted deep-nesting cases that used to raise are in tests/security/test_gate_bounds.py."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from envelope.body import decode_body
from envelope.grants import grant_ref, pae
from envelope.seal import ENVELOPE_TYPE, Opened, Wire
from streams.replies import Reason, Refusal
from tests.envelope.world import NOW, TRACE, World

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4),
    max_leaves=25,
)
WORLD = World()


def encode(value: Any) -> bytes:
    try:
        return msgspec.msgpack.encode(value)
    except (TypeError, OverflowError, msgspec.EncodeError):
        assume(False)
        raise AssertionError("unreachable") from None


def signed(payload: bytes) -> bytes:
    """Sign whatever payload with the caller's real key: the checks after the signature run."""
    sig = WORLD.caller.sign(pae(ENVELOPE_TYPE, payload))
    return msgspec.msgpack.encode(Wire(WORLD.caller.did, payload, sig))


def header(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1, "caller": WORLD.caller.did, "audience": WORLD.service.did,
        "capability": "moon:dispatch", "traceparent": TRACE, "issued_at_ms": NOW,
        "expires_at_ms": NOW + 30_000, "nonce": b"n" * 16, "request_id": "r-1",
        "grant": grant_ref(WORLD.grant),
    }
    return {**base, **changes}


def outcome(data: bytes) -> Opened | Refusal:
    return World().open(data)


DEEP = b"\x91" * 50_000 + b"\xc0"  # [[[[…nil…]]]]: 50 kB, well under the 64 kB cap
DEEP_MAP = b"\x81\xa1k" * 16_000 + b"\xc0"


def payload(*, body: bytes = b"\x80", grants: bytes | None = None,
            treaty: bytes | None = None) -> bytes:
    """A Signed array from raw parts, so any part can be bytes no encoder would write."""
    parts = [msgspec.msgpack.encode(header()), body,
             grants if grants is not None else msgspec.msgpack.encode([WORLD.grant]),
             treaty if treaty is not None else b"\xc0"]
    return b"\x94" + b"".join(parts)


def _deep_header() -> bytes:
    fields = header()
    out = bytes([0x80 | len(fields)])
    for name, value in fields.items():
        out += msgspec.msgpack.encode(name)
        out += DEEP if name == "capability" else msgspec.msgpack.encode(value)
    return out


DEEP_PLACES = {
    "outer": DEEP,
    "signed payload": signed(DEEP),
    "grants list": signed(payload(grants=DEEP)),
    "grant bytes": signed(payload(grants=msgspec.msgpack.encode([DEEP]))),
    "treaty": signed(payload(treaty=DEEP)),
    "treaty bytes": signed(payload(treaty=msgspec.msgpack.encode(DEEP))),
    "header field": signed(b"\x94" + _deep_header() + b"\x80"
                           + msgspec.msgpack.encode([WORLD.grant]) + b"\xc0"),
}


@pytest.mark.parametrize("place", sorted(DEEP_PLACES))
def test_deep_nesting_outside_the_body_is_refused(place: str) -> None:
    result = outcome(DEEP_PLACES[place])
    assert isinstance(result, Refusal) and result.reason is Reason.MALFORMED, result


class Request(msgspec.Struct, frozen=True):
    workflow_id: str
    state: object = None


def test_a_service_decoding_a_deep_body_gets_a_refusal() -> None:
    for body in (DEEP, msgspec.msgpack.encode({"workflow_id": "w"})[:-1],
                 b"\x82\xabworkflow_id\xa1w\xa5state" + DEEP):
        refused = decode_body(body, Request)
        assert isinstance(refused, Refusal) and refused.reason is Reason.MALFORMED
    assert decode_body(msgspec.msgpack.encode({"workflow_id": "w"}), Request) == Request("w")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_signed_payload_is_answered(value: Any) -> None:
    assert isinstance(outcome(signed(encode(value))), Opened | Refusal)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_signed_body_is_answered(body: Any) -> None:
    payload = msgspec.msgpack.encode([header(), msgspec.Raw(encode(body)), [WORLD.grant], None])
    assert isinstance(outcome(signed(payload)), Opened | Refusal)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(header())) | st.text(max_size=6), values,
                       max_size=4),
       st.sets(st.sampled_from(sorted(header())), max_size=3))
def test_a_signed_header_with_wrong_types_missing_or_extra_keys_is_answered(
    changes: dict[str, Any], dropped: set[str]
) -> None:
    fields = {k: v for k, v in header(**changes).items() if k not in dropped}
    payload = encode([fields, msgspec.Raw(WORLD.body()), [WORLD.grant], None])
    result = outcome(signed(payload))
    assert isinstance(result, Opened | Refusal)
    if isinstance(result, Opened):
        assert result.caller == WORLD.caller.did  # nothing but a good header opens


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=4), values)
def test_signed_grants_and_treaty_of_any_shape_are_answered(grants: list[Any],
                                                            treaty: Any) -> None:
    payload = encode([header(), msgspec.Raw(WORLD.body()), grants, treaty])
    assert isinstance(outcome(signed(payload)), Opened | Refusal)


def test_every_truncation_of_a_valid_envelope_is_refused() -> None:
    data = WORLD.seal()
    for end in range(len(data)):
        assert isinstance(outcome(data[:end]), Refusal), end


def test_every_truncation_of_a_signed_payload_is_refused() -> None:
    payload = msgspec.msgpack.decode(WORLD.seal(), type=Wire).payload
    for end in range(len(payload)):
        assert isinstance(outcome(signed(payload[:end])), Refusal), end


def test_array_and_map_headers_claiming_billions_of_items_are_refused() -> None:
    for claim in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
                  b"\xc6\xff\xff\xff\xff"):
        assert isinstance(outcome(claim), Refusal)
        assert isinstance(outcome(signed(claim)), Refusal)
        body = msgspec.msgpack.encode([header(), msgspec.Raw(b"\x81\xa1a" + claim),
                                       [WORLD.grant], None])
        assert isinstance(outcome(signed(body)), Refusal)
