"""Splitting a file into one whitespace-aligned byte range per mapper."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paxmr.wordcount import WHITESPACE
from paxmr.wordcount.split import ByteRange, split

WS = frozenset(WHITESPACE)


def write(tmp_path: Path, data: bytes, name: str = "f.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def check_ranges(data: bytes, ranges: list[ByteRange], parts: int) -> None:
    """Exactly ``parts`` ranges, in order, covering the file, every inner cut at whitespace."""
    assert len(ranges) == parts
    assert ranges[0].offset == 0
    for a, b in itertools.pairwise(ranges):
        assert a.offset + a.size == b.offset
    assert ranges[-1].offset + ranges[-1].size == len(data)
    assert all(r.size >= 0 for r in ranges)
    for r in ranges[1:]:
        cut = r.offset
        # A cut is either the end of the file or a whitespace byte: never inside a word
        # (and since every whitespace byte is ASCII, never inside a multi-byte character).
        assert cut == len(data) or data[cut] in WS, (cut, data[max(0, cut - 3) : cut + 3])


@pytest.mark.parametrize("ws", [bytes([c]) for c in WHITESPACE], ids=repr)
def test_every_whitespace_kind_is_a_cut_point(tmp_path: Path, ws: bytes) -> None:
    data = ws.join([b"alpha", b"beta", b"gamma", b"delta"] * 50)
    ranges = split(write(tmp_path, data), 4)
    check_ranges(data, ranges, 4)
    # The file is long and has whitespace everywhere, so no range is empty.
    assert all(r.size > 0 for r in ranges)
    assert sum(len(data[r.offset : r.offset + r.size].split()) for r in ranges) == 200


def test_cut_never_splits_a_multibyte_character(tmp_path: Path) -> None:
    word = "日本語🙂ß".encode()  # 3-, 4- and 2-byte characters only
    data = b" ".join([word] * 1000)
    ranges = split(write(tmp_path, data), 3)
    check_ranges(data, ranges, 3)
    for r in ranges:
        piece = data[r.offset : r.offset + r.size]
        piece.decode()  # every range is valid UTF-8 on its own
        assert all(w == word for w in piece.split())


def test_near_equal_sizes(tmp_path: Path) -> None:
    data = b"word " * 20_000  # 100 kB, cut points every 5 bytes
    for parts in (2, 3, 7, 16):
        ranges = split(write(tmp_path, data), parts)
        check_ranges(data, ranges, parts)
        ideal = len(data) / parts
        assert all(abs(r.size - ideal) <= 6 for r in ranges), (parts, ranges)


def test_empty_file(tmp_path: Path) -> None:
    assert split(write(tmp_path, b""), 3) == [ByteRange(0, 0)] * 3


def test_file_without_whitespace_is_one_range(tmp_path: Path) -> None:
    data = b"x" * 100_000 + "é".encode()
    ranges = split(write(tmp_path, data), 4)
    check_ranges(data, ranges, 4)
    assert ranges[0] == ByteRange(0, len(data))
    assert all(r.size == 0 for r in ranges[1:])


def test_file_smaller_than_the_number_of_mappers(tmp_path: Path) -> None:
    data = b"a b"
    ranges = split(write(tmp_path, data), 8)
    check_ranges(data, ranges, 8)
    words = [w for r in ranges for w in data[r.offset : r.offset + r.size].split()]
    assert words == [b"a", b"b"]


def test_one_part_is_the_whole_file(tmp_path: Path) -> None:
    data = b"one two\nthree"
    assert split(write(tmp_path, data), 1) == [ByteRange(0, len(data))]


def test_zero_parts_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="parts"):
        split(write(tmp_path, b"a b"), 0)


def test_long_word_across_the_scan_block(tmp_path: Path) -> None:
    # The whitespace search reads 64 KiB blocks: a cut point far past the target still counts.
    data = b"a " + b"y" * 200_000 + b" b " + b"z" * 10
    ranges = split(write(tmp_path, data), 2)
    check_ranges(data, ranges, 2)
    assert ranges[1].offset == 2 + 200_000


texts = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=12).map(lambda b: bytes(c for c in b if c not in WS)),
        st.text(min_size=1, max_size=6).map(str.encode),
        st.sampled_from([bytes([c]) for c in WHITESPACE]),
        st.sampled_from([b"  ", b"\r\n", b"\n\n\t"]),
    ),
    max_size=60,
).map(b"".join)


@given(data=texts, parts=st.integers(1, 12))
def test_split_properties(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, parts: int
) -> None:
    path = write(tmp_path_factory.mktemp("split"), data)
    ranges = split(path, parts)
    check_ranges(data, ranges, parts)
    words = [w for r in ranges for w in data[r.offset : r.offset + r.size].split()]
    assert words == data.split()
