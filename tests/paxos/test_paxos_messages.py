"""Wire form of peer messages: round trips, and untrusted input rejected with BadMessage."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from paxmr.paxos import BadMessage, Ballot, Entry, from_wire, to_wire
from paxmr.paxos.messages import (
    Accept,
    Accepted,
    AcceptedValue,
    CatchupReply,
    CatchupRequest,
    Forward,
    Message,
    Nack,
    Prepare,
    Promise,
    ReadIndexReply,
    ReadIndexRequest,
    ReadProbe,
    ReadProbeAck,
    Refuse,
    StatusReply,
    StatusRequest,
)

B = Ballot(7, 2)
E = Entry("req-1", b"\x00tally")
MESSAGES: list[Message] = [
    Prepare(B, 3),
    Promise(B, 3, (AcceptedValue(3, Ballot(6, 1), E), AcceptedValue(4, B, Entry("", b""))), 3),
    Promise(B, 0, (), 0, voter=False, more=True),
    Nack(B, Ballot(8, 3), 10),
    Accept(B, ((3, E), (4, Entry("", b""))), 3),
    Accept(B, (), 9),
    Accepted(B, (3, 4), 3),
    Forward("req-1", b"value"),
    Refuse("req-1", "busy", "too many"),
    CatchupRequest(0),
    CatchupReply(5, (E, Entry("", b"")), 7),
    ReadProbe(B, 4, 2),
    ReadProbeAck(B, 4, 2),
    ReadIndexRequest(12),
    ReadIndexReply(12, 30),
    StatusRequest(3),
    StatusReply(3, "leader", 2, B, False, True, 40, 38, "ab12", ("no quorum",), "0.1.0", 900, 5),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_through_msgpack(msg):
    packed = msgpack.packb(to_wire(msg), use_bin_type=True)
    assert from_wire(msgpack.unpackb(packed, raw=False)) == msg


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        {},
        {"k": "nonsense"},
        {"k": 1},
        {"k": "prepare", "b": [1, 2]},
        {"k": "prepare", "b": [1, 2], "from": -1},
        {"k": "prepare", "b": [1, 2], "from": True},
        {"k": "prepare", "b": [1, 2, 3], "from": 0},
        {"k": "prepare", "b": [1.5, 2], "from": 0},
        {"k": "prepare", "b": [1, 2], "from": 2**70},
        {"k": "accept", "b": [1, 2], "e": [[0, ["id", "not bytes"]]], "c": 0},
        {"k": "accept", "b": [1, 2], "e": "x", "c": 0},
        {"k": "accepted", "b": [1, 2], "s": [0, -5], "len": 0},
        {"k": "forward", "id": b"bytes", "v": b""},
        {"k": "entries", "from": 0, "e": [["a"]], "len": 1},
    ],
)
def test_malformed_input_raises_bad_message(obj):
    with pytest.raises(BadMessage):
        from_wire(obj)


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.binary(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["k", "b", "from", "e", "c", "s", "len", "id", "v"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@given(st.one_of(wire_values, st.sampled_from(MESSAGES).map(to_wire)))
def test_any_input_decodes_or_raises_bad_message(obj):
    with contextlib.suppress(BadMessage):
        from_wire(obj)


@given(st.sampled_from(MESSAGES), st.sampled_from(["k", "b", "e", "len", "from", "s"]))
def test_a_missing_field_is_bad(msg, field):
    wire = to_wire(msg)
    if field not in wire:
        return
    del wire[field]
    with pytest.raises(BadMessage):
        from_wire(wire)
