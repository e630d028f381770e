from __future__ import annotations

import struct

import msgpack
import pytest

from paxmr.paxos import Ballot
from paxmr.paxos.log import Entry
from paxmr.paxos.messages import Accept, Prepare, to_wire
from paxmr.services.transport import (
    DECODE_INLINE,
    MAX_ARRAY_LEN,
    MAX_OBJECTS,
    Frame,
    FrameError,
    Hello,
    Relayed,
    decode,
    encode,
    frame,
    hello,
)
from paxmr.stamps import Stamp

MSG = Prepare(Ballot(3, 1), 7)
MSG_WIRE = to_wire(MSG)
LIMIT = 1 << 20


def body(data: bytes) -> bytes:
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    return data[4:]


def test_round_trip_carries_the_sequence_number() -> None:
    assert decode(body(frame(41, encode(1, 2, MSG, 9))), me=2, limit=LIMIT) == Frame(1, 41, MSG, 9)


def test_a_relay_and_a_hello_round_trip() -> None:
    news = (Relayed(3, Stamp(5, 9, 11), (4, 2)), Relayed(4, Stamp(6, 0), ()))
    payload = encode(1, 2, MSG, 9, news)
    got = decode(body(frame(7, payload)), me=2, limit=LIMIT)
    assert got == Frame(1, 7, MSG, 9, news)
    # The sessions apart from the rows, whose length a paxmr before sessions checks.
    assert [len(row) for row in msgpack.unpackb(payload)["r"]] == [4, 4]
    greeting = Hello("c", stamp=Stamp(1, 2), seen=Stamp(3, 4), retired=(8, 9))
    assert decode(body(frame(0, hello(1, 2, greeting))), me=2, limit=LIMIT).msg == greeting
    # With sessions (stamps.went_back): the stamp's is the last of its storage's.
    greeting = Hello("c", stamp=Stamp(1, 2, 6), seen=Stamp(3, 4, 5), sessions=((4, 0), (6, 1)))
    assert decode(body(frame(0, hello(1, 2, greeting))), me=2, limit=LIMIT).msg == greeting


def test_frame_for_another_node_is_refused() -> None:
    with pytest.raises(FrameError, match="not a frame for this node"):
        decode(body(frame(0, encode(1, 3, MSG, 0))), me=2, limit=LIMIT)


def _raw(payload: bytes) -> bytes:
    return struct.pack(">Q", 0) + payload


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1", "undecodable"),
        (msgpack.packb([1, 2, 3]), "not a frame"),
        (msgpack.packb({"src": "1", "dst": 2, "msg": {"k": "catchup", "from": 0}}), "not a frame"),
        (msgpack.packb({"src": True, "dst": 2, "msg": {"k": "catchup", "from": 0}}), "not a frame"),
        (msgpack.packb({"src": 1, "dst": 2, "msg": {"k": "prepare"}}), "bad message"),
        (msgpack.packb({"src": 1, "dst": 2, "msg": {"k": "nonsense"}}), "bad message"),
        (msgpack.packb({"src": 1, "dst": 2, "msg": MSG_WIRE, "w": -1}), "bad write count"),
        (msgpack.packb({"src": 1, "dst": 2, "msg": MSG_WIRE, "w": "1"}), "bad write count"),
        (msgpack.packb({"src": 1, "dst": 2, "hello": "c", "stamp": [1]}), "bad stamp"),
        (msgpack.packb({"src": 1, "dst": 2, "hello": "c", "seen": [1, -2]}), "bad stamp"),
        (msgpack.packb({"src": 1, "dst": 2, "hello": "c", "seen": [True, 2]}), "bad stamp"),
        (msgpack.packb({"src": 1, "dst": 2, "hello": "c", "opens": []}), "bad list of sessions"),
        (msgpack.packb({"src": 1, "dst": 2, "hello": "c", "opens": [[0, 1]]}), "of sessions"),
        (msgpack.packb({"src": 1, "dst": 2, "hello": "c", "opens": [[1, -1]]}), "of sessions"),
        (msgpack.packb({"src": 1, "dst": 2, "hello": "c", "ss": "1"}), "bad session"),
        (msgpack.packb({"src": 1, "dst": 2, "hello": "c", "voters": [1, "2"]}), "bad node list"),
        (msgpack.packb({"src": 1, "dst": 2, "hello": "c", "founders": [0]}), "bad node list"),
        (
            msgpack.packb({"src": 1, "dst": 2, "hello": "c", "retired": [-1]}),
            "a hello with a bad list",
        ),
        (msgpack.packb({"src": 1, "dst": 2, "msg": MSG_WIRE, "r": {"3": 1}}), "without rows"),
        (
            msgpack.packb({"src": 1, "dst": 2, "msg": MSG_WIRE, "r": [[3, 1, 2, []]], "rs": []}),
            "bad list of sessions",
        ),
        (
            msgpack.packb({"src": 1, "dst": 2, "msg": MSG_WIRE, "r": [[3, 1, 2, []]], "rs": [-1]}),
            "bad session",
        ),
        (msgpack.packb({"src": 1, "dst": 2, "msg": MSG_WIRE, "r": [[3, 1, 2]]}), "bad row"),
        (msgpack.packb({"src": 1, "dst": 2, "msg": MSG_WIRE, "r": [[0, 1, 2, []]]}), "bad node"),
        (msgpack.packb({"src": 1, "dst": 2, "msg": MSG_WIRE, "r": [[3, 1, -2, []]]}), "stamp"),
        (
            msgpack.packb({"src": 1, "dst": 2, "msg": MSG_WIRE, "r": [[3, 1, 2, ["7"]]]}),
            "a relay with a bad list",
        ),
        # structure limits: longer arrays, maps or strings than any message has, extension types
        (msgpack.packb({"src": 1, "dst": 2, "msg": [0] * (MAX_ARRAY_LEN + 1)}), "undecodable"),
        (msgpack.packb({"src": 1, "dst": 2, "msg": {str(i): i for i in range(17)}}), "undecodable"),
        (msgpack.packb({"src": 1, "dst": 2, "msg": "x" * 5000}), "undecodable"),
        (msgpack.packb({"src": 1, "dst": 2, "msg": msgpack.ExtType(1, b"x")}), "undecodable"),
    ],
)
def test_garbage_is_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode(_raw(payload), me=2, limit=LIMIT)


def test_binary_longer_than_the_limit_is_refused() -> None:
    payload = msgpack.packb({"src": 1, "dst": 2, "msg": b"x" * 2048}, use_bin_type=True)
    with pytest.raises(FrameError, match="undecodable"):
        decode(_raw(payload), me=2, limit=1024)


def test_large_frame_round_trips_through_the_bounded_decoder() -> None:
    entries = tuple((slot, Entry(f"r{slot}", bytes([slot]) * 40_000)) for slot in range(5))
    msg = Accept(Ballot(2, 1), entries, 3)
    data = body(frame(7, encode(1, 2, msg, 2**62)))
    assert len(data) > DECODE_INLINE
    assert decode(data, me=2, limit=LIMIT) == Frame(1, 7, msg, 2**62)


def test_large_frame_with_too_many_objects_is_refused() -> None:
    payload = msgpack.packb({"src": 1, "dst": 2, "msg": [[0] * 1000] * (MAX_OBJECTS // 1000)})
    with pytest.raises(FrameError, match="objects"):
        decode(_raw(payload), me=2, limit=LIMIT)
