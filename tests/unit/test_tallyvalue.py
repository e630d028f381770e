"""The streaming encoder of a tally into its log object's value (paxmr/tallyvalue.py), and the
spool a PRM's worker writes it to (heavy.encode_tally): byte for byte msgpack's packing of the
whole log object (the encoder paxmr had before), which the reader's layout is."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from paxmr import chunks, tallyvalue
from paxmr.logobject import LogObject
from paxmr.services import heavy
from paxmr.wordcount import WHITESPACE, tally

words = st.binary(min_size=1, max_size=20).filter(frozenset(WHITESPACE).isdisjoint)
counts = st.dictionaries(words, st.integers(1, 2**64 - 1), max_size=60)
names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)


def _tally(items: dict[bytes, int]) -> bytes:
    return tally.HEADER + b"".join(b"%s\t%d\n" % item for item in sorted(items.items()))


def _encode(data: bytes, file: str, node: int, rid: str, block: int | None) -> tuple[bytes, object]:
    """``data`` encoded by `encode` in blocks of ``block`` bytes, or (None) read whole and
    encoded in one pass, as the PRM encodes a small tally (`encode_whole`)."""
    if block is None:
        return tallyvalue.encode_whole(io.BytesIO(data), file, node, rid, size=len(data))
    pieces: list[bytes] = []
    encoded = tallyvalue.encode(io.BytesIO(data), file, node, rid, pieces.append,
                                size=len(data), block_bytes=block)  # fmt: skip
    return b"".join(pieces), encoded


blocks = st.one_of(st.integers(1, 64), st.just(tally.BLOCK_BYTES), st.none())


@given(items=counts, file=names, node=st.integers(0, 2**63), rid=names, block=blocks)
def test_the_value_is_the_log_objects_encoding(
    items: dict[bytes, int], file: str, node: int, rid: str, block: int | None
) -> None:
    data = _tally(items)
    reference = LogObject.from_tally_bytes(data, file, node, rid)
    value, encoded = _encode(data, file, node, rid, block)
    assert value == _packed(reference)
    assert reference.encode() == value  # LogObject's is this encoder (tallyvalue.encode_counts)
    assert isinstance(encoded, tallyvalue.Encoded)
    assert encoded.size == len(value)
    assert encoded.digest == reference.digest
    assert encoded.summary == reference.summary(0)


def _packed(obj: LogObject) -> bytes:
    """The log object's fields packed whole by msgpack, in the layout's order (logobject._LAYOUT):
    what the streamed value must equal, byte for byte."""
    body = {"v": 1, "file": obj.file, "node": obj.node, "rid": obj.request_id,
            "words": list(obj.words), "counts": list(obj.counts), "digest": obj.digest}  # fmt: skip
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


_BROKEN = [b"a\t01\n", b"a\t0\n", b"a\t\n", b"a b\t1\n", b"\t1\n", b"a\t1\t1\n", b"a 1\n", b"a\t1"]


@given(
    items=counts,
    at=st.integers(0, 60),
    broken=st.sampled_from([*_BROKEN, None]),
    block=blocks,
)
def test_a_bad_tally_is_refused_as_tally_parse_refuses_it(
    items: dict[bytes, int], at: int, broken: bytes | None, block: int | None
) -> None:
    """One line broken, or (None) one line repeated, in any block: the error names the line."""
    lines = [b"%s\t%d\n" % item for item in sorted(items.items())]
    where = min(at, len(lines))
    lines.insert(where, broken if broken is not None else (lines or [b"a\t1\n"])[where - 1])
    data = tally.HEADER + b"".join(lines)
    assert _outcome(lambda: _encode(data, "f", 1, "r", block)) == _outcome(
        lambda: tally.parse(data, "f")
    )


@given(
    items=counts.filter(bool), pick=st.integers(0, 59), big=st.integers(2**64, 2**80), block=blocks
)
def test_a_count_over_2_64_is_refused_naming_its_line(
    items: dict[bytes, int], pick: int, big: int, block: int | None
) -> None:
    """msgpack's integers end at 2**64 - 1, a tally's do not (a reduce adds counts up): such a
    count is refused as a bad tally, at its line, in any block; never wrapped or cut."""
    words = sorted(items)
    word = words[pick % len(words)]
    line = 2 + words.index(word)  # the header is line 1
    with pytest.raises(tally.TallyError, match=rf"^f:{line}: a count over 2\*\*64 - 1 cannot"):
        _encode(_tally({**items, word: big}), "f", 1, "r", block)


def _outcome(run: Callable[[], object]) -> str | None:
    """The error ``run`` raises, or None."""
    try:
        run()
    except tally.TallyError as exc:
        return str(exc)
    return None


@given(items=counts, part=st.integers(16, 300))
def test_a_spooled_value_is_read_back_as_split_cuts_it(
    tmp_path_factory: pytest.TempPathFactory, items: dict[bytes, int], part: int
) -> None:
    """The worker's spool holds the value; the parts the PRM reads from it at offsets of
    ``part`` bytes and their manifest are those of chunks.split (values of several parts)."""
    root = tmp_path_factory.mktemp("spool")
    data = _tally(items)
    (root / "t_reduced").write_bytes(data)
    st_ = (root / "t_reduced").stat()
    spool = root / "value"
    spool.touch()
    encoded = heavy.encode_tally(str(root), "t_reduced", (st_.st_dev, st_.st_ino, st_.st_size),
                                 str(spool), node=2, rid="r")  # fmt: skip
    reference = LogObject.from_tally_bytes(data, "t_reduced", 2, "r")
    manifest, parts = chunks.split(_packed(reference), "t_reduced", reference.digest, part)
    got = chunks.manifest_of("t_reduced", encoded.digest, encoded.sha256, encoded.size, part)
    assert got == manifest
    fd = os.open(spool, os.O_RDONLY)
    try:
        assert [os.pread(fd, part, i * part) for i in range(got.parts)] == parts
    finally:
        os.close(fd)


class _Changing(io.BytesIO):
    """A file whose content is ``later`` from its ``after``-th read from the start on."""

    def __init__(self, first: bytes, later: bytes, after: int) -> None:
        super().__init__(first)
        self.later, self.after, self.starts = later, after, 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self.starts += 1
        if self.starts == self.after:
            self.getbuffer()[:] = self.later  # same length: the counts differ
        return super().seek(pos, whence)


@pytest.mark.parametrize(
    ("first", "later"),
    [
        ({b"a": 11111}, {b"a": 1, b"b": 1}),
        ({b"a": 1, b"b": 1}, {b"a": 11111}),
    ],
)
def test_a_tally_that_changes_while_it_is_read_is_refused(
    first: dict[bytes, int], later: dict[bytes, int]
) -> None:
    """Another number of lines than the first pass counted, when the words are packed: an
    array length from one version and items from another would make a value that is neither."""
    assert len(_tally(first)) == len(_tally(later))
    sink: list[bytes] = []
    changing = _Changing(_tally(first), _tally(later), 2)
    with pytest.raises(tally.TallyError, match="changed while it was read"):
        tallyvalue.encode(changing, "f", 1, "r", sink.append, size=len(_tally(first)))


def test_a_tally_changed_to_as_many_lines_is_the_value_of_the_lines_read() -> None:
    """The same number of lines, other counts, from the second pass on: the words, counts and
    digest all come from that one pass, so the value is the new version's, never a mix."""
    first, later = _tally({b"a": 1, b"b": 2}), _tally({b"a": 3, b"b": 2})
    sink: list[bytes] = []
    got = tallyvalue.encode(_Changing(first, later, 2), "f", 1, "r", sink.append, size=len(first))
    reference = LogObject.from_tally_bytes(later, "f", 1, "r")
    assert b"".join(sink) == _packed(reference)
    assert (got.digest, got.summary) == (reference.digest, reference.summary(0))


class _Resized(io.BytesIO):
    """A file that grows or shrinks to ``later`` at its ``after``-th read from the start."""

    def __init__(self, first: bytes, later: bytes, after: int) -> None:
        super().__init__(first)
        self.later, self.after, self.starts, self.furthest = later, after, 0, 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self.starts += 1
        if self.starts == self.after:
            super().seek(0)
            super().truncate()
            super().write(self.later)
        return super().seek(pos, whence)

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.furthest = max(self.furthest, self.tell())
        return data


_GROWN = b"".join(b"b%08d\t1\n" % i for i in range(100_000))  # 1.2 MB, sorted after "a"


@pytest.mark.parametrize("after", [1, 2], ids=["before-the-count", "between-the-passes"])
@pytest.mark.parametrize(
    ("later", "why"),
    [
        (_tally({b"a": 1}) + _GROWN, "appended to"),
        (_tally({b"a": 1}), "cut short"),  # to a valid tally of fewer lines
    ],
    ids=["grown", "shrunk"],
)
def test_a_tally_resized_since_its_size_was_checked_is_refused_unread(
    after: int, later: bytes, why: str
) -> None:
    """The PRM checks a tally's size (limits.tally_bytes; 64 KB or less is encoded on its event
    loop) and passes it: a file appended to after the check was encoded whole (24 MB from one
    checked at 60 KB), one cut short encoded as the fewer lines. Neither pass reads more than
    ``size`` + 1 bytes, and a file found of another size is refused."""
    first = _tally({b"a": 1, b"aa": 2})
    f = _Resized(first, later, after)
    sink: list[bytes] = []
    with pytest.raises(tally.TallyError, match="changed while it was read"):
        tallyvalue.encode(f, "f", 1, "r", sink.append, size=len(first), block_bytes=64)
    assert f.furthest <= len(first) + 1, why


@pytest.mark.parametrize("later", [_tally({b"a": 1}) + _GROWN, _tally({b"a": 1})],
                         ids=["grown", "shrunk"])  # fmt: skip
def test_a_small_tally_resized_since_its_size_was_checked_is_refused_unread(later: bytes) -> None:
    """The same for the PRM's one-pass read of a small tally (encode_whole)."""
    first = _tally({b"a": 1, b"aa": 2})
    f = _Resized(first, later, 1)
    with pytest.raises(tally.TallyError, match="changed while it was read"):
        tallyvalue.encode_whole(f, "f", 1, "r", size=len(first))
    assert f.furthest <= len(first) + 1


def test_the_worker_refuses_a_file_replaced_since_the_prm_opened_it(tmp_path: Path) -> None:
    path = tmp_path / "t_reduced"
    path.write_bytes(_tally({b"a": 1}))
    st_ = path.stat()
    (tmp_path / "value").touch()
    with path.open("rb"):  # held, as by the PRM: its inode is not reused
        (tmp_path / "new").write_bytes(_tally({b"a": 1}))
        (tmp_path / "new").replace(path)  # the same content under the same name, another file
        with pytest.raises(tally.TallyError, match="replaced while it was read"):
            heavy.encode_tally(str(tmp_path), "t_reduced", (st_.st_dev, st_.st_ino, st_.st_size),
                               str(tmp_path / "value"), node=1, rid="r")  # fmt: skip


def test_the_counts_wait_in_a_file_past_a_block(tmp_path: Path) -> None:
    """The counts are packed as the words are read, and written after them: past a block's
    size they wait in an unnamed file in ``spill``, so memory stays at a few blocks (1.7 MiB
    here, for 3 MB of packed counts in 64 KiB blocks)."""
    data = _tally({b"w%07d" % i: 100_000 + i for i in range(600_000)})
    value = hashlib.sha256()
    tracemalloc.start()
    try:
        encoded = tallyvalue.encode(io.BytesIO(data), "f", 1, "r", value.update,
                                    size=len(data), block_bytes=1 << 16, spill=str(tmp_path))  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert encoded.sha256 == value.hexdigest()
    assert encoded.summary["distinct"] == 600_000
    assert peak < 5 << 19, f"peak {peak / 2**20:.1f} MiB"
    assert list(tmp_path.iterdir()) == []  # an unnamed file: nothing left behind
