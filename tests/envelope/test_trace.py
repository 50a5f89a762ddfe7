import pytest
from hypothesis import given
from hypothesis import strategies as st

from envelope.trace import child_traceparent, is_valid_traceparent, new_traceparent, trace_id

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("flags", ["00", "01", "03", "09", "ff"])
def test_any_flags_are_accepted(flags: str) -> None:
    assert is_valid_traceparent(VALID[:-2] + flags)


@pytest.mark.parametrize(
    "value",
    [
        "",
        VALID + "-",
        VALID[:-1],
        VALID.upper(),
        "ff" + VALID[2:],
        "00-" + "0" * 32 + VALID[35:],
        VALID[:36] + "0" * 16 + VALID[52:],
        VALID.replace("-", "_"),
        VALID[:10] + "g" + VALID[11:],
        VALID[:53] + "0x",
    ],
)
def test_malformed_traceparents_are_rejected(value: str) -> None:
    assert not is_valid_traceparent(value)


@given(st.binary(min_size=24, max_size=24), st.booleans())
def test_generated_traceparents_are_always_valid(random24: bytes, sampled: bool) -> None:
    value = new_traceparent(random24, sampled=sampled)
    assert is_valid_traceparent(value)
    assert value.endswith("-01" if sampled else "-00")


def test_a_child_keeps_the_trace_and_changes_the_span() -> None:
    child = child_traceparent(VALID, b"\x11" * 8)
    assert is_valid_traceparent(child)
    assert trace_id(child) == trace_id(VALID)
    assert child != VALID
