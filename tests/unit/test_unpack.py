from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from paxmr.services.unpack import UnpackError, unpack

LIMITS = {
    "max_objects": 10_000,
    "max_depth": 8,
    "max_str_len": 4096,
    "max_bin_len": 1 << 20,
    "max_container_len": 1000,
}

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=300)
    | st.binary(max_size=70_000),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=50,
)


@given(values)
def test_decodes_like_msgpack(value: object) -> None:
    packed = msgpack.packb(value, use_bin_type=True)
    assert unpack(packed, **LIMITS) == msgpack.unpackb(packed, raw=False)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([[0] * 100] * 101, "more than 10000 objects"),
        ([[[[[[[[[0]]]]]]]]], "nested deeper"),
        ([0] * 1001, "container of 1001"),
        ("x" * 5000, "string of 5000"),
        (b"x" * ((1 << 20) + 1), "binary of"),
        (1.5, "type 0xcb"),
        (msgpack.ExtType(1, b"x"), "not accepted"),
        ({1: 2}, "keys must be strings"),
    ],
)
def test_limits(value: object, reason: str) -> None:
    with pytest.raises(UnpackError, match=reason):
        unpack(msgpack.packb(value, use_bin_type=True), **LIMITS)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x92\x01", b"\xc4\x10abc", b"\xdd\xff\xff\xff\xff", b"\x01\x02", b"\xa2\xff\xfe"],
)
def test_truncated_or_bad_bytes(data: bytes) -> None:
    with pytest.raises(UnpackError):
        unpack(data, **LIMITS)
