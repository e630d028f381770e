"""Reading a log object's value in pieces (logobject.read): the same verdict as decoding it whole,
in memory bounded whatever the value's size."""

from __future__ import annotations

import hashlib
import itertools
import operator
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxmr import chunks, logobject
from paxmr.catalog import summarize
from paxmr.logobject import BadLogObject, LogObject
from paxmr.wordcount import tally


def _whole(value: bytes) -> tuple[Any, ...]:
    """The whole-value decode paxmr used before it read values in pieces (the oracle): its
    verdict on a value with the encoder's layout must not change."""
    try:
        body: Any = msgpack.unpackb(value, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.StackError):
        return ("bad",)
    if not isinstance(body, dict) or body.get("v") != 1:
        return ("bad",)
    file, node, rid = body.get("file"), body.get("node"), body.get("rid")
    words, counts, digest = body.get("words"), body.get("counts"), body.get("digest")
    if not (
        type(file) is str and type(node) is int and type(rid) is str and type(digest) is str
        and type(words) is list and type(counts) is list and len(words) == len(counts)
        and set(map(type, words)) <= {bytes} and set(map(type, counts)) <= {int}
        and (not counts or min(counts) > 0)
    ):  # fmt: skip
        return ("bad",)
    if not all(map(operator.lt, words, itertools.islice(words, 1, None))):
        return ("bad",)
    lines = b"".join(b"%s\t%d\n" % wc for wc in zip(words, counts, strict=True))
    if hashlib.sha256(tally.HEADER + lines).hexdigest() != digest:
        return ("bad",)
    return (file, node, rid, tuple(words), tuple(counts), digest)


def _in_pieces(value: bytes, cuts: list[int]) -> logobject.Pieces:
    """``value`` fed in pieces cut at ``cuts`` (from an offset on, as a chunk reader does)."""
    bounds = sorted({0, len(value), *(c % (len(value) + 1) for c in cuts)})

    def pieces(offset: int) -> Any:
        for a, b in itertools.pairwise(bounds):
            if b > offset:
                yield value[max(a, offset) : b]

    return pieces


def _read(value: bytes, cuts: list[int]) -> tuple[Any, ...]:
    try:
        stored = logobject.read(_in_pieces(value, cuts), len(value))
        words: list[bytes] = []
        counts: list[int] = []
        for w, c in stored.batches():
            words += w
            counts += c
    except BadLogObject:
        return ("bad",)
    return (stored.file, stored.node, stored.request_id, tuple(words), tuple(counts),
            stored.digest)  # fmt: skip


# What a forged field may hold instead: every msgpack type, and the ints a bool or float equals.
ANY: st.SearchStrategy[Any] = st.sampled_from(
    [None, True, False, 0, 1, -1, 2**64 - 1, 1.0, b"", b"a", "", "a", [], [1], {}]
)
WORDS = st.lists(st.one_of(st.binary(min_size=1, max_size=4), ANY), max_size=8)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Values with the encoder's layout: mostly log objects, each field at times wrong."""
    words = sorted(set(draw(st.lists(st.binary(min_size=1, max_size=4), max_size=8))))
    counts = [draw(st.integers(1, 2**40)) for _ in words]
    digest = LogObject.from_counts("f", 1, "r", zip(words, counts, strict=True)).digest
    fields: dict[str, Any] = {"v": 1, "file": "f", "node": 1, "rid": "r", "words": words,
                              "counts": counts, "digest": digest}  # fmt: skip
    how = draw(st.sampled_from(["as is", "a field", "a field", "a field", "two fields",
                                "cut short", "data after", "bytes as str"]))  # fmt: skip
    for key in draw(st.permutations(list(fields)))[: how.count("field") + how.count("two")]:
        fields[key] = draw({"words": WORDS, "counts": st.lists(ANY, max_size=8)}.get(key, ANY))
    packed: bytes = msgpack.packb(fields, use_bin_type=how != "bytes as str")
    return {"cut short": packed[: len(packed) // 2], "data after": packed + b"\x00"}.get(
        how, packed
    )


@settings(max_examples=600)
@given(
    value=bodies(),
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
    batch=st.sampled_from([logobject._BATCH, 1, 3]),  # words in one batch (held), or in several
)
def test_a_value_read_in_any_pieces_gets_the_whole_value_decodes_verdict(
    value: bytes, cuts: list[int], batch: int
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logobject, "_BATCH", batch)
        assert _read(value, cuts) == _whole(value)


def _packed(*objects: Any) -> bytes:
    return b"".join(msgpack.packb(o, use_bin_type=True) for o in objects)


@pytest.mark.parametrize(
    ("map_header", "array_header"),
    [
        (b"\x87", lambda n: bytes([0x90 | n])),
        (b"\xde\x00\x07", lambda n: b"\xdc" + n.to_bytes(2, "big")),
        (b"\xdf\x00\x00\x00\x07", lambda n: b"\xdd" + n.to_bytes(4, "big")),
    ],
    ids=["fix", "16-bit", "32-bit"],
)
def test_a_map_or_array_header_of_any_width_is_read(map_header: bytes, array_header: Any) -> None:
    """msgpack writes the shortest header; a value may hold a wider one (the reader reads them
    itself, `_Stream.header`), and the whole-value decode took any."""
    obj = LogObject.from_counts("f", 1, "r", [(b"a", 1), (b"b", 2)])
    value = b"".join([map_header, _packed("v", 1, "file", "f", "node", 1, "rid", "r", "words"),
                      array_header(2), _packed(b"a", b"b", "counts"), array_header(2),
                      _packed(1, 2, "digest", obj.digest)])  # fmt: skip
    assert _read(value, [1, 2, 3]) == _whole(value) == _read(obj.encode(), [])


def _fields(**changes: Any) -> bytes:
    """A log object with some fields changed; its digest made again for changed words or
    counts, so that only the check of the change can refuse it."""
    obj = LogObject.from_counts("f", 1, "r", [(b"a", 1), (b"b", 2)])
    body = {**msgpack.unpackb(obj.encode()), **changes}
    if "digest" not in changes:
        lines = b"".join(
            b"%s\t%d\n" % wc for wc in zip(body["words"], body["counts"], strict=False)
        )
        body["digest"] = hashlib.sha256(tally.HEADER + lines).hexdigest()
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    "value",
    [
        _fields(),
        _fields(v=True),  # True == 1: taken by the whole-value decode too
        _fields(node=True),
        _fields(node=1.0),
        _fields(counts=[True, 2]),
        _fields(counts=[0, 2]),
        _fields(counts=[1]),
        _fields(words=[b"a", b"a"]),
        _fields(words=[b"b", b"a"]),
        _fields(file=b"f"),
        _fields(digest=None),
    ],
)
def test_each_check_gives_the_whole_value_decodes_verdict(value: bytes) -> None:
    assert _read(value, [3, 9]) == _whole(value)


@given(counts=st.dictionaries(st.binary(min_size=1, max_size=6), st.integers(1, 9), max_size=300))
def test_batches_and_pieces_cut_anywhere_agree_with_the_words(counts: dict[bytes, int]) -> None:
    obj = LogObject.from_counts("f", 2, "r", sorted(counts.items()))
    value = obj.encode()
    one_byte = list(range(len(value)))  # msgpack fed a byte at a time
    assert _read(value, one_byte) == _whole(value) != ("bad",)


def test_a_value_with_its_fields_in_another_order_is_not_a_log_object() -> None:
    obj = LogObject.from_counts("f", 1, "r", [(b"a", 1)])
    body = msgpack.unpackb(obj.encode())
    reordered = msgpack.packb(dict(reversed(body.items())), use_bin_type=True)
    assert _whole(reordered) != ("bad",)  # the whole-value decode took it
    with pytest.raises(BadLogObject, match="fields v, file"):
        logobject.read(logobject.pieces_of(reordered), len(reordered))


@pytest.mark.parametrize("key", logobject._LAYOUT)
def test_a_value_with_a_field_named_otherwise_is_not_a_log_object(key: str) -> None:
    body = msgpack.unpackb(LogObject.from_counts("f", 1, "r", [(b"a", 1)]).encode())
    renamed = msgpack.packb({(k + "_" if k == key else k): v for k, v in body.items()})
    assert _whole(renamed) == ("bad",)
    with pytest.raises(BadLogObject, match="fields v, file"):
        logobject.read(logobject.pieces_of(renamed), len(renamed))


def test_words_out_of_order_across_a_batch_boundary_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(logobject, "_BATCH", 2)
    words = [b"a", b"b", b"b", b"c"]  # the repeat straddles the first two batches
    value = msgpack.packb({"v": 1, "file": "f", "node": 1, "rid": "r", "words": words,
                           "counts": [1] * 4, "digest": "d"}, use_bin_type=True)  # fmt: skip
    with pytest.raises(BadLogObject, match="strictly increasing"):
        logobject.read(logobject.pieces_of(value), len(value))


def test_a_large_chunked_value_is_summarized_in_a_few_mib() -> None:
    """Decoding the value whole took 9-10 bytes of memory per byte of value (Python objects
    for every word, the digest's lines formatted at once)."""
    obj = LogObject.from_counts("f", 1, "r", ((b"w%09d" % i, i + 1) for i in range(600_000)))
    value = obj.encode()  # 10 MB
    manifest, parts = chunks.split(value, obj.file, obj.digest, 1 << 20)
    shown = obj.summary(3)
    del obj, value
    tracemalloc.start()
    try:
        got = summarize(manifest.encode(), 3, lambda m: parts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == shown
    assert peak < 24 << 20, f"peak {peak / 2**20:.1f} MiB to summarize a 10 MB value"


def _forged(file: bytes = b"\xa1f", word: bytes = b"\xc4\x01a") -> bytes:
    """A value with the encoder's layout whose file field, or only word, is raw msgpack."""
    key = msgpack.packb
    return b"".join([b"\x87", key("v"), b"\x01", key("file"), file, key("node"), b"\x01",
                     key("rid"), key("r"), key("words"), b"\x91", word, key("counts"),
                     b"\x91\x01", key("digest"), key("d")])  # fmt: skip


_EMPTY_ARRAYS = b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\x90" * (1 << 20)


@pytest.mark.parametrize(
    "value",
    [
        _forged(file=_EMPTY_ARRAYS),  # [] is one byte of value and 56 of Python list
        _forged(word=_EMPTY_ARRAYS),
        _forged(file=b"\xdd" + (1 << 20).to_bytes(4, "big")) + b"\x00" * (1 << 20),
        # (an array's header alone: msgpack allocates its list, 8 bytes per element, at once)
    ],
    ids=["a field of empty arrays", "a word of empty arrays", "an array header alone"],
)
def test_a_forged_value_is_refused_in_memory_bounded_by_its_size(value: bytes) -> None:
    """No log object has an array, a map or an ext inside a field or a word (the whole-value
    decode refused them by their types): read whole, they took 64 bytes of memory per byte of
    value (a 4 MB value: 273 MiB), which on every replica could kill the worker and then the
    PRM that summarizes in its place, at every start (_restore_catalog)."""
    assert _whole(value) == ("bad",)
    tracemalloc.start()
    try:
        got = summarize(value, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "error" in got
    assert peak < 2 * len(value) + (4 << 20), f"peak {peak / 2**20:.1f} MiB for {len(value)} B"


def test_a_value_that_is_msgpack_is_not_said_to_be_other() -> None:
    """Only msgpack's own errors are "not msgpack" (read wraps them): the reader's verdicts on
    the fields are shown as they are."""
    for value, error in [
        (_fields(v=2), "not a version 1 log object"),
        (_fields(node="1"), "log object fields have the wrong types"),
        (_fields(words=[b"b", b"a"]), "log object words are not strictly increasing"),
    ]:
        with pytest.raises(BadLogObject) as raised:
            logobject.read(logobject.pieces_of(value), len(value))
        assert str(raised.value) == error
