from __future__ import annotations

import hashlib
import hmac
import struct

import msgpack
import pytest

from paxmr.paxos import Ballot
from paxmr.paxos.messages import Prepare
from paxmr.services.transport import TAG, FrameError, decode, encode

KEY = b"k" * 32
MSG = Prepare(Ballot(3, 1), 7)


def body(frame: bytes) -> bytes:
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


def test_round_trip() -> None:
    assert decode(KEY, body(encode(KEY, 1, 2, MSG)), me=2) == (1, MSG)


def test_wrong_key_is_refused() -> None:
    with pytest.raises(FrameError, match="authentication"):
        decode(b"x" * 32, body(encode(KEY, 1, 2, MSG)), me=2)


def test_flipped_payload_bit_is_refused() -> None:
    raw = bytearray(body(encode(KEY, 1, 2, MSG)))
    raw[-1] ^= 1
    with pytest.raises(FrameError, match="authentication"):
        decode(KEY, bytes(raw), me=2)


def test_frame_for_another_node_is_refused() -> None:
    with pytest.raises(FrameError, match="not a frame for this node"):
        decode(KEY, body(encode(KEY, 1, 3, MSG)), me=2)


def _signed(payload: bytes) -> bytes:
    return hmac.digest(KEY, payload, hashlib.sha256) + payload


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1", "undecodable"),
        (msgpack.packb([1, 2, 3]), "not a frame"),
        (msgpack.packb({"src": 1, "dst": 2, "msg": {"k": "prepare"}}), "bad message"),
        (msgpack.packb({"src": 1, "dst": 2, "msg": {"k": "nonsense"}}), "bad message"),
    ],
)
def test_authenticated_garbage_is_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode(KEY, _signed(payload), me=2)


def test_short_body_is_refused() -> None:
    with pytest.raises(FrameError):
        decode(KEY, b"x" * (TAG - 1), me=2)
