"""The corpus generator: exact size, deterministic per seed, Zipf-like, some multi-byte words."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from paxmr.wordcount import corpus


@pytest.mark.parametrize("size", [0, 1, 17, 4096, 300_000])
def test_exact_size_and_deterministic(tmp_path: Path, size: int) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert corpus.generate(a, size, seed=3, vocabulary=300) == size
    assert corpus.generate(b, size, seed=3, vocabulary=300) == size
    assert a.stat().st_size == size
    assert a.read_bytes() == b.read_bytes()


def test_seeds_differ(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    corpus.generate(a, 50_000, seed=1, vocabulary=300)
    corpus.generate(b, 50_000, seed=2, vocabulary=300)
    assert a.read_bytes() != b.read_bytes()


def test_looks_like_text(tmp_path: Path) -> None:
    out = tmp_path / "c"
    corpus.generate(out, 400_000, seed=9, vocabulary=2000)
    data = out.read_bytes()
    text = data.decode(errors="replace")  # the exact size may cut the last character
    words = Counter(data.split())
    assert len(words) > 500
    top = [n for _, n in words.most_common(10)]
    assert top[0] > 5 * words.most_common(200)[-1][1]  # a few words dominate (Zipf)
    assert any(ord(ch) > 0x7F for ch in text)
    assert "\n" in text
    assert text.count("\n") > 1000
