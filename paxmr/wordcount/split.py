"""Cut a file into byte ranges of near-equal size, only at whitespace."""

from __future__ import annotations

import itertools
import os
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


def split(source: Path | BinaryIO, parts: int) -> list[ByteRange]:
    """Exactly ``parts`` ranges covering the file in order; some are empty for tiny files.

    ``source`` is a path or a binary file open for reading."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    if isinstance(source, Path):
        with source.open("rb") as f:
            return split(f, parts)
    end = os.fstat(source.fileno()).st_size
    cuts = [0]
    for i in range(1, parts):
        target = max(end * i // parts, cuts[-1])
        cuts.append(_next_whitespace(source, target, end))
    cuts.append(end)
    return [ByteRange(a, b - a) for a, b in itertools.pairwise(cuts)]
