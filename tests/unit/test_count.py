"""Counting the words of a byte range, streaming in chunks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paxmr.wordcount import WHITESPACE, count
from paxmr.wordcount.count import count_range
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


@given(data=texts, chunk=st.integers(1, 16), parts=st.integers(1, 6))
def test_ranges_sum_to_counter_of_whole(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk: int, parts: int
) -> None:
    path = tmp_path_factory.mktemp("count") / "f"
    path.write_bytes(data)
    saved = count.CHUNK
    count.CHUNK = chunk  # small chunks exercise the carry of a word cut by a chunk boundary
    try:
        total: Counter[bytes] = Counter()
        for r in split(path, parts):
            total += count_range(path, r.offset, r.size)
    finally:
        count.CHUNK = saved
    assert total == Counter(data.split())
