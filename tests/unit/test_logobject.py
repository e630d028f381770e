from __future__ import annotations

import hashlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from paxmr.logobject import BadLogObject, LogObject, merge, show
from paxmr.wordcount import WHITESPACE, tally

words = st.binary(min_size=1, max_size=12).filter(lambda w: not set(w) & set(WHITESPACE))
tallies = st.dictionaries(words, st.integers(1, 10**12), max_size=40)


@given(counts=tallies)
def test_round_trip_and_digest_is_the_tally_files_sha256(tmp_path_factory, counts) -> None:
    path = tmp_path_factory.mktemp("t") / "f_reduced"
    tally.write(path, counts.items())
    obj = LogObject.from_tally(path, "f_reduced", 2, "rid")
    assert obj.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    back = LogObject.decode(obj.encode())
    assert back == obj
    assert dict(zip(back.words, back.counts, strict=True)) == counts
    assert back.total == sum(counts.values())


def test_tampered_counts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "f_reduced"
    tally.write(path, [(b"a", 1), (b"b", 2)])
    body = msgpack.unpackb(LogObject.from_tally(path, "f", 1, "r").encode())
    body["counts"][1] = 3
    with pytest.raises(BadLogObject, match="digest"):
        LogObject.decode(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize("value", [b"", b"\xc1", msgpack.packb({"v": 9}), msgpack.packb([1, 2])])
def test_garbage_is_refused(value: bytes) -> None:
    with pytest.raises(BadLogObject):
        LogObject.decode(value)


def test_merge_adds_counts_and_show_keeps_invalid_utf8_visible(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    tally.write(a, [(b"x", 1), (b"\xff", 2)])
    tally.write(b, [(b"x", 4)])
    merged = merge([LogObject.from_tally(a, "a", 1, "1"), LogObject.from_tally(b, "b", 2, "2")])
    assert merged == {b"x": 5, b"\xff": 2}
    assert show(b"\xff") == "\\xff"
    assert show("é".encode()) == "é"


def _body(**changes: object) -> bytes:
    body = {"v": 1, "file": "f", "node": 1, "rid": "r", "words": [b"a"], "counts": [1]}
    body["digest"] = hashlib.sha256(tally.HEADER + b"a\t1\n").hexdigest()
    body.update(changes)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\xc1",  # never used by msgpack
        msgpack.packb([1, 2]),
        _body(v=2),
        _body(words=[1]),  # accepted by the first decode, then the digest step raised TypeError
        _body(words=[b"a", 2], counts=[1, 1]),
        _body(counts=[b"1"]),
        _body(counts=[0]),
        _body(counts=[1, 2]),
        _body(words=[b"b", b"a"], counts=[1, 1]),
        # Each caught by one check only: its digest matches its words and counts.
        _body(counts=[True]),  # b"%d" % True is b"1"
        _body(
            words=[b"a", b"a"],
            counts=[1, 1],
            digest=hashlib.sha256(tally.HEADER + b"a\t1\na\t1\n").hexdigest(),
        ),
        _body(file=None),
        _body(node="1"),
        _body(digest=3),
        _body(digest="0" * 64),
    ],
)
def test_anything_that_is_not_a_log_object_raises_bad_log_object_only(value: bytes) -> None:
    assert LogObject.decode(_body()).words == (b"a",)  # the unchanged body is valid
    with pytest.raises(BadLogObject):
        LogObject.decode(value)
