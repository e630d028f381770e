"""Tally files: the word counts a mapper or reducer writes.

Format (version 1), bytes::

    paxmr-tally 1\\n
    <word>\\t<count>\\n      one line per distinct word, sorted by the word's bytes

A word never contains whitespace, so tab and newline delimit it unambiguously and any byte
sequence (valid UTF-8 or not) round-trips exactly. Counts are positive decimal integers.
Files are written to a temporary name, fsynced and renamed, so a reader never sees half a tally.
"""

from __future__ import annotations

import heapq
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from paxmr.wordcount import WHITESPACE

HEADER = b"paxmr-tally 1\n"
_NOT_IN_WORD = frozenset(WHITESPACE)


class TallyError(ValueError):
    """The file is not a valid tally; the message names the file and line."""


def write(path: Path, counts: Iterable[tuple[bytes, int]]) -> None:
    """Write ``counts`` (any order) atomically and durably."""
    write_sorted(path, sorted(counts))


def write_sorted(path: Path, items: Iterable[tuple[bytes, int]]) -> int:
    """Write sorted ``items`` and return how many; what ``read`` would reject raises and leaves
    ``path`` as it was."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    written = 0
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(HEADER)
            for item in _checked(str(path), items):
                f.write(b"%s\t%d\n" % item)
                written += 1
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return written


def _checked(name: str, items: Iterable[tuple[bytes, int]]) -> Iterator[tuple[bytes, int]]:
    """Pass ``items`` through, refusing what the format cannot hold (line numbers as in a file)."""
    previous = b""
    for number, (word, count) in enumerate(items, start=2):
        if not word or not _NOT_IN_WORD.isdisjoint(word):
            raise TallyError(f"{name}:{number}: a word must be non-empty and without whitespace")
        if count < 1:
            raise TallyError(f"{name}:{number}: count must be a positive integer")
        if word <= previous:
            raise TallyError(f"{name}:{number}: words are not in strictly increasing order")
        previous = word
        yield word, count


def _parse(name: str, f: IO[bytes]) -> Iterator[tuple[bytes, int]]:
    if f.readline() != HEADER:
        raise TallyError(f"{name}: not a paxmr tally (first line must be {HEADER!r})")
    for number, line in enumerate(f, start=2):
        word, tab, rest = line.partition(b"\t")
        digits = rest[:-1]
        if not word or not tab or not rest.endswith(b"\n"):
            raise TallyError(f"{name}:{number}: expected <word>TAB<count>")
        if not digits.isdigit() or digits.startswith(b"0"):
            raise TallyError(f"{name}:{number}: count must be a positive integer")
        yield word, int(digits)


def iterate(path: Path) -> Iterator[tuple[bytes, int]]:
    """Stream a tally's (word, count) pairs in order, validating as it goes."""
    with path.open("rb") as f:
        yield from _checked(str(path), _parse(str(path), f))


def read(path: Path) -> dict[bytes, int]:
    return dict(iterate(path))


def merge(tallies: Iterable[Iterable[tuple[bytes, int]]]) -> Iterator[tuple[bytes, int]]:
    """Sum sorted streams of (word, count) into one sorted stream, holding one line of each."""
    word: bytes | None = None
    total = 0
    for w, n in heapq.merge(*tallies):
        if w == word:
            total += n
            continue
        if word is not None:
            yield word, total
        word, total = w, n
    if word is not None:
        yield word, total
