"""Tally files: the word counts a mapper or reducer writes.

Format (version 1), bytes::

    paxmr-tally 1\\n
    <word>\\t<count>\\n      one line per distinct word, sorted by the word's bytes

A word never contains whitespace, so tab and newline delimit it unambiguously and any byte
sequence (valid UTF-8 or not) round-trips exactly. Counts are positive decimal integers.
Files are written to a temporary name, fsynced and renamed, so a reader never sees half a tally.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import io
import itertools
import operator
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from paxmr.wordcount import WHITESPACE

HEADER = b"paxmr-tally 1\n"
_NOT_IN_WORD = frozenset(WHITESPACE)


class TallyError(ValueError):
    """The file is not a valid tally; the message names the file and line."""


def write(path: Path, counts: Iterable[tuple[bytes, int]], *, dir_fd: int | None = None) -> None:
    """Write ``counts`` (any order) atomically and durably."""
    write_sorted(path, sorted(counts), dir_fd=dir_fd)


def write_sorted(
    path: Path, items: Iterable[tuple[bytes, int]], *, dir_fd: int | None = None
) -> int:
    """Write sorted ``items`` and return how many; what ``read`` would reject raises and leaves
    ``path`` as it was. With ``dir_fd``, ``path`` is a plain name in that directory."""
    written = 0

    def lines() -> Iterator[bytes]:
        nonlocal written
        for item in _checked(str(path), items):
            written += 1
            yield b"%s\t%d\n" % item

    write_blocks(path, lines(), dir_fd=dir_fd)
    return written


def write_blocks(path: Path, blocks: Iterable[bytes], *, dir_fd: int | None = None) -> None:
    """Write a tally whose body (its lines after the header) comes in ``blocks``, already valid.

    The file is written under a temporary name, fsynced, renamed over ``path`` (a rename never
    follows a link at the destination) and the directory fsynced. With ``dir_fd``, ``path`` is a
    plain name inside that directory and nothing is looked up by name from elsewhere.
    """
    own_dir = dir_fd is None
    if dir_fd is None:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    name = path.name if own_dir else str(path)
    try:
        tmp, fd = _create_temporary(dir_fd, name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(HEADER)
                for block in blocks:
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        if own_dir:
            os.close(dir_fd)


def _create_temporary(dir_fd: int, name: str) -> tuple[str, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = f".{name[:200]}.{secrets.token_hex(6)}.tmp"
        try:
            return tmp, os.open(tmp, flags, 0o644, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", name)


def _checked(
    name: str, items: Iterable[tuple[bytes, int]], start: int = 2, previous: bytes = b""
) -> Iterator[tuple[bytes, int]]:
    """Pass ``items`` through, refusing what the format cannot hold (line numbers as in a file:
    the first item is line ``start``, and must come after ``previous``)."""
    for number, (word, count) in enumerate(items, start=start):
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
    return _parse_lines(name, f)


def _parse_lines(name: str, lines: Iterable[bytes], start: int = 2) -> Iterator[tuple[bytes, int]]:
    for number, line in enumerate(lines, start=start):
        word, tab, rest = line.partition(b"\t")
        digits = rest[:-1]
        if not word or not tab or not rest.endswith(b"\n"):
            raise TallyError(f"{name}:{number}: expected <word>TAB<count>")
        if not digits.isdigit() or digits.startswith(b"0"):
            raise TallyError(f"{name}:{number}: count must be a positive integer")
        yield word, int(digits)


def iterate(source: Path | BinaryIO, name: str | None = None) -> Iterator[tuple[bytes, int]]:
    """Stream a tally's (word, count) pairs in order, validating as it goes.

    ``source`` is a path or a binary file open for reading (read from its start, buffered);
    ``name`` is what error messages call it."""
    if isinstance(source, Path):
        with source.open("rb") as f:
            yield from _checked(str(source), _parse(str(source), f))
        return
    name = name or "tally"
    source.seek(0)
    with io.BufferedReader(_Unclosed(source), 1 << 16) as f:
        yield from _checked(name, _parse(name, f))


class _Unclosed(io.RawIOBase):
    """A caller's file, read through a buffer that must not close it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


# What separates a valid tally's fields: each line is a word, a tab, a count, a newline, so
# its bytes with all but tabs and newlines deleted are b"\t\n" once per line.
_NOT_SEPARATORS = bytes(range(256)).translate(None, b"\t\n")


def parse(data: bytes, name: str = "tally") -> tuple[list[bytes], list[int]]:
    """A whole tally held in memory: its words and counts, validated as `iterate` validates,
    several times faster (`blocks`, in one block)."""
    words: list[bytes] = []
    counts: list[int] = []
    for block_words, digits in blocks(io.BytesIO(data).read, name, max(len(data), 1)):
        words += block_words
        counts += map(int, digits)
    return words, counts


BLOCK_BYTES = 1 << 20


def blocks(
    read: Callable[[int], bytes],
    name: str = "tally",
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """A tally's words and counts (as their decimal digits), one block of lines at a time,
    validated as `iterate` validates (the same errors, naming the same line), several times
    faster: each block is checked at once in C, and only one that fails is walked line by line
    for its error. ``read(n)`` returns the file's next bytes (at most n, b"" at its end); about
    ``block_bytes`` are held at a time, or the longest line if it is longer."""
    if read(len(HEADER)) != HEADER:  # as `iterate`'s first line: HEADER's one newline ends it
        raise TallyError(f"{name}: not a paxmr tally (first line must be {HEADER!r})")
    number, previous = 2, b""
    pending: list[bytes] = []  # a line longer than a block, in pieces: joined once, not grown
    while data := read(block_bytes):
        end = data.rfind(b"\n") + 1
        if not end:
            pending.append(data)
            continue
        block = b"".join([*pending, data[:end]]) if pending else data[:end]
        pending = [data[end:]] if end < len(data) else []
        words, digits = _block(name, block, number, previous)
        number += len(words)
        previous = words[-1]
        yield words, digits
    if pending:  # a last line without its newline
        list(_checked(name, _parse_lines(name, [b"".join(pending)], number), number, previous))


def _fields(block: bytes) -> tuple[list[bytes], list[bytes]] | None:
    """The words and counts of ``block`` (whole lines), if every line is a word of bytes that
    are not WHITESPACE, a tab, a count of digits without a leading zero and a newline; None
    if not. (An empty word passes here, and is refused with the words' order: b"" comes after
    no word, nor after the b"" a tally's first word must come after.) Checked by a few scans
    of the block in C: a regular expression over its lines took 6.7 of the 24 ms of CPU that
    encoding a 337 KB tally took."""
    separators = block.translate(None, _NOT_SEPARATORS)
    if (
        separators != b"\t\n" * (len(separators) // 2)  # a tab, then a newline, on each line
        or any(space in block for space in b" \v\f\r")  # the other WHITESPACE
        or b"\t\n" in block  # an empty count
        or b"\t0" in block  # a count with a leading zero
    ):
        return None
    # word, count, word, count, ..., b"": each line is one word, a tab, one count.
    fields = block.replace(b"\t", b"\n").split(b"\n")
    words, digits = fields[0:-1:2], fields[1::2]
    return (words, digits) if b"".join(digits).isdigit() else None


def _block(
    name: str, block: bytes, number: int, previous: bytes
) -> tuple[list[bytes], list[bytes]]:
    """The words and counts of ``block``, whole lines from line ``number`` on, that must come
    after the word ``previous``."""
    fields = _fields(block)
    if fields is not None:
        words, digits = fields
        if previous < words[0] and all(map(operator.lt, words, itertools.islice(words, 1, None))):
            return words, digits
    lines = (line + b"\n" for line in block.split(b"\n")[:-1])
    pairs = list(_checked(name, _parse_lines(name, lines, number), number, previous))
    return [w for w, _ in pairs], [b"%d" % c for _, c in pairs]


def read(source: Path | BinaryIO, name: str | None = None) -> dict[bytes, int]:
    return dict(iterate(source, name))


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
