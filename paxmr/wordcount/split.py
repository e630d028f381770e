"""Cut a file into byte ranges of near-equal size, only at whitespace."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import BinaryIO, NamedTuple

from paxmr.wordcount import WHITESPACE

_SCAN = 64 * 1024


class ByteRange(NamedTuple):
    offset: int
    size: int


def _next_whitespace(f: BinaryIO, pos: int, end: int) -> int:
    """The first whitespace byte at or after ``pos``, or ``end`` when the rest is one word."""
    f.seek(pos)
    while pos < end:
        block = f.read(min(_SCAN, end - pos))
        hits = [i for i in (block.find(w) for w in WHITESPACE) if i >= 0]
        if hits:
            return pos + min(hits)
        pos += len(block)
    return end


def split(path: Path, parts: int) -> list[ByteRange]:
    """Exactly ``parts`` ranges covering the file in order; some are empty for tiny files."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    end = path.stat().st_size
    cuts = [0]
    with path.open("rb") as f:
        for i in range(1, parts):
            target = max(end * i // parts, cuts[-1])
            cuts.append(_next_whitespace(f, target, end))
    cuts.append(end)
    return [ByteRange(a, b - a) for a, b in itertools.pairwise(cuts)]
