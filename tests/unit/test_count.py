"""Counting the words of a byte range, streaming in chunks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paxmr.wordcount import WHITESPACE, count
from paxmr.wordcount.count import count_range, count_range_arrow, count_range_reference
from paxmr.wordcount.split import split

# Texts rich in the awkward cases: invalid UTF-8, multi-byte characters, every whitespace kind,
# runs of whitespace, leading and trailing whitespace.
pieces = st.one_of(
    st.binary(min_size=1, max_size=10),
    st.text(min_size=1, max_size=5).map(str.encode),
    st.sampled_from(["日本語", "🙂", "straße", "λόγος"]).map(str.encode),
    st.sampled_from([bytes([c]) for c in WHITESPACE] + [b"\r\n", b"   "]),
    st.sampled_from([b"\xff", b"\xc3", b"\xe6\x97", b"\x80\x80"]),  # broken UTF-8
)
texts = st.lists(pieces, max_size=80).map(b"".join)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(count, "CHUNK", 3)
    monkeypatch.setattr(count, "COMPACT_ROWS", 4)


def test_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"the cat\tthe\ndog\x0bthe\x0ccat\r")
    assert count_range(path, 0, path.stat().st_size) == Counter({b"the": 3, b"cat": 2, b"dog": 1})


def test_word_longer_than_many_chunks(tmp_path: Path, small_chunks: None) -> None:
    path = tmp_path / "f"
    data = b"a " + b"w" * 100 + b" b " + b"z" * 17
    path.write_bytes(data)
    assert count_range(path, 0, len(data)) == Counter(data.split())


def test_empty_range(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a b c")
    assert count_range(path, 2, 0) == Counter()


def test_progress_reports_bytes_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(count, "CHUNK", 10)
    path = tmp_path / "f"
    path.write_bytes(b"abc def " * 10)
    seen: list[int] = []
    count_range(path, 0, 80, seen.append)
    assert seen == list(range(10, 81, 10))


@given(data=texts, chunk=st.integers(1, 16), compact=st.integers(1, 8), parts=st.integers(1, 6))
def test_ranges_sum_to_counter_of_whole(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk: int, compact: int, parts: int
) -> None:
    path = tmp_path_factory.mktemp("count") / "f"
    path.write_bytes(data)
    saved = count.CHUNK, count.COMPACT_ROWS
    # Small chunks exercise words cut by a chunk boundary; few rows, the compaction of counts.
    count.CHUNK, count.COMPACT_ROWS = chunk, compact
    try:
        total: Counter[bytes] = Counter()
        for r in split(path, parts):
            total += count_range(path, r.offset, r.size)
            assert count_range(path, r.offset, r.size) == count_range_reference(
                path, r.offset, r.size, chunk
            )
    finally:
        count.CHUNK, count.COMPACT_ROWS = saved
    assert total == Counter(data.split())


@given(data=texts, chunk=st.integers(1, 16))
def test_counts_sorted_and_tally_blocks_match_counter(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk: int
) -> None:
    path = tmp_path_factory.mktemp("count") / "f"
    path.write_bytes(data)
    saved = count.CHUNK
    count.CHUNK = chunk
    try:
        counts = count_range_arrow(path, 0, len(data))
    finally:
        count.CHUNK = saved
    expected = sorted(Counter(data.split()).items())
    assert list(counts.items(batch=3)) == expected
    body = b"".join(counts.tally_blocks(batch=2))
    assert body == b"".join(b"%s\t%d\n" % item for item in expected)


@pytest.mark.parametrize("ws", [bytes([c]) for c in WHITESPACE])
def test_every_ascii_whitespace_separates_and_nothing_else(tmp_path: Path, ws: bytes) -> None:
    # Bytes Python's str.split would treat as space but bytes.split does not: NEL, NBSP, \x1c-\x1f.
    others = b"\x85\xa0\x1c\x1d\x1e\x1f\x00\xc2\x85\xe2\x80\x83"
    data = ws.join([b"a", others, b"a" + others, b"\xff\xfe", b"a"]) + ws
    path = tmp_path / "f"
    path.write_bytes(data)
    assert count_range(path, 0, len(data)) == Counter(data.split())


def test_one_huge_word_is_scanned_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 16 MiB word read in 4 KiB chunks: each byte is scanned once and the word gathered once
    (the old loop copied and re-scanned the growing carry for every chunk: quadratic)."""
    monkeypatch.setattr(count, "CHUNK", 4096)
    scanned: list[int] = []
    cuts = count._cuts

    def counting(chunk: bytes, *, first: bool) -> tuple[int, int]:
        scanned.append(len(chunk))
        return cuts(chunk, first=first)

    monkeypatch.setattr(count, "_cuts", counting)
    path = tmp_path / "f"
    word = b"w" * (16 << 20)
    path.write_bytes(b"a\t" + word + b"\nb")
    counts = count_range_arrow(path, 0, path.stat().st_size)
    assert sum(scanned) == path.stat().st_size
    assert counts.counts.to_pylist() == [1, 1, 1]
    assert counts.words.to_pylist() == [b"a", b"b", word]
