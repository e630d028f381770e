"""The log object: one node's reduced tally as it is replicated into the log.

Encoded with msgpack (words are bytes, so text that is not UTF-8 survives exactly). ``digest`` is
the SHA-256 of the tally in its file format, so an operator can check an entry against the
``{F}_reduced`` file it came from with ``sha256sum``; reading re-computes and checks it.

A value is read in pieces, never decoded whole (`read`): a chunked object's value (chunks.py) is
hundreds of MB, and decoding one at once (msgpack.unpackb, then the digest's lines formatted at
once) took 9-10 bytes of memory per byte of value on every replica (1.1 GiB for a 118 MB tally).
Read here it takes a few MiB whatever its size: msgpack is fed a MiB at a time, and the words and
counts are checked and hashed a batch at a time. The words come before their counts in the value,
so a first pass checks the fields and both arrays, and a second reads the two arrays side by side
for the digest (and for whoever wants the words).

So a log object is a value with the encoder's layout: a map of exactly the fields of `_LAYOUT`, in
that order. Every value paxmr ever encoded has it; a forged one with its fields in another order
(which the whole-value decode accepted) shows as an entry with an error, alike on every replica
that runs this code.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from paxmr.wordcount import tally

VERSION = 1


class BadLogObject(ValueError):
    pass


class _Tails(dict[int, bytes]):
    """The end of a tally line, b"\t<count>\n", by its count: made once for the counts most
    words have, formatted for the others."""

    def __missing__(self, count: int) -> bytes:
        return b"\t%d\n" % count


_TAILS = _Tails((n, b"\t%d\n" % n) for n in range(1, 1 << 12))


def _hash_lines(sha: hashlib._Hash, words: Sequence[bytes], counts: Sequence[int]) -> None:
    """Add the tally file's lines of these words and counts to ``sha``: the words and their
    lines' ends interleaved and joined in C, `_JOINED` lines at a time: a table lookup per
    count, not a format operation (for a 337 KB tally of 40,041 words, 3.0-3.1 ms of CPU
    against 6.2-6.3 ms for one format operation over all its lines, a third of a follower's
    summary). A ValueError if their lengths differ."""
    if len(words) != len(counts):
        raise ValueError("as many words as counts")
    lines: list[bytes] = [b""] * (2 * _JOINED)
    for i in range(0, len(words), _JOINED):
        some = words[i : i + _JOINED]
        if len(some) < _JOINED:
            del lines[2 * len(some) :]
        lines[0::2] = some
        lines[1::2] = map(_TAILS.__getitem__, counts[i : i + _JOINED])
        sha.update(b"".join(lines))


# Lines joined at a time: bytes.join holds an 80-byte buffer record per piece it joins, so all
# of a batch's at once took 10 MiB more than its words.
_JOINED = 1 << 10


def _digest(words: Sequence[bytes], counts: Sequence[int]) -> str:
    """The SHA-256 of the tally file these words and counts make."""
    sha = hashlib.sha256(tally.HEADER)
    for i in range(0, len(words), _BATCH):
        _hash_lines(sha, words[i : i + _BATCH], counts[i : i + _BATCH])
    return sha.hexdigest()


@dataclass(frozen=True)
class LogObject:
    file: str
    node: int
    request_id: str
    words: tuple[bytes, ...]  # strictly increasing
    counts: tuple[int, ...]
    digest: str

    @classmethod
    def from_tally(cls, path: Path, file: str, node: int, request_id: str) -> LogObject:
        """Raises ``tally.TallyError`` when ``path`` is not a valid tally."""
        return cls.from_tally_bytes(path.read_bytes(), file, node, request_id)

    @classmethod
    def from_tally_bytes(cls, data: bytes, file: str, node: int, request_id: str) -> LogObject:
        """From a whole tally file's bytes (raises ``tally.TallyError``). A valid tally is
        exactly its lines in the file format, so its digest is the SHA-256 of ``data``."""
        words, counts = tally.parse(data, file)
        digest = hashlib.sha256(data).hexdigest()
        return cls(file, node, request_id, tuple(words), tuple(counts), digest)

    @classmethod
    def from_counts(
        cls, file: str, node: int, request_id: str, items: Iterable[tuple[bytes, int]]
    ) -> LogObject:
        """From (word, count) pairs sorted by word, as a tally file holds them."""
        pairs = list(items)
        words = tuple(w for w, _ in pairs)
        counts = tuple(n for _, n in pairs)
        return cls(file, node, request_id, words, counts, _digest(words, counts))

    def encode(self) -> bytes:
        """Its value, packed by the one encoder (tallyvalue.py)."""
        from paxmr import tallyvalue  # noqa: PLC0415 - it imports VERSION from here

        return tallyvalue.encode_fields(self.file, self.node, self.request_id, self.words,
                                        self.counts, self.digest)  # fmt: skip

    @classmethod
    def decode(cls, value: bytes) -> LogObject:
        """Raises BadLogObject, and nothing else, for any value that is not a log object: a
        chosen value comes from a peer, and every replica applies it (see catalog.py). Holds
        every word: for a value of any size, `read` it instead."""
        stored = read(pieces_of(value), len(value))
        words: list[bytes] = []
        counts: list[int] = []
        for w, c in stored.batches():
            words += w
            counts += c
        return cls(stored.file, stored.node, stored.request_id, tuple(words), tuple(counts),
                   stored.digest)  # fmt: skip

    @property
    def total(self) -> int:
        return sum(self.counts)

    def summary(self, position: int) -> dict[str, Any]:
        return _summary(position, file=self.file, node=self.node, request_id=self.request_id,
                        total=self.total, distinct=len(self.words), digest=self.digest)  # fmt: skip


def _summary(
    position: int, *, file: str, node: int, request_id: str, total: int, distinct: int, digest: str
) -> dict[str, Any]:
    return {"position": position, "file": file, "node": node, "words": total,
            "distinct": distinct, "digest": digest, "request_id": request_id}  # fmt: skip


# --- reading a value in pieces ----------------------------------------------------------------

# What reads a value: its bytes from an offset on, in pieces (`pieces_of`, chunks.Manifest.pieces).
Pieces = Callable[[int], Iterator[bytes | memoryview]]

_LAYOUT = ("v", "file", "node", "rid", "words", "counts", "digest")
_FEED = 1 << 20  # bytes given to msgpack at a time
# Words (and counts) read at a time: a summary peaks at 9 / 19 MiB for words of 6 / 20 bytes.
_BATCH = 1 << 16


def feed(buffer: bytes, start: int = 0) -> Iterator[memoryview]:
    """``buffer`` from ``start`` on, in pieces of at most `_FEED` bytes (no copies)."""
    view = memoryview(buffer)
    return (view[i : i + _FEED] for i in range(start, len(view), _FEED))


def pieces_of(value: bytes) -> Pieces:
    return lambda offset: feed(value, offset)


# What a stream refuses: an array, map or ext with anything in it. No log object holds one in a
# field or a word (the whole-value decode refused them too, by their types), and decoded whole
# they take up to 64 bytes of memory per byte of value (a [] is one byte), or 8 per element for
# an array's header alone (msgpack allocates the list up front). The value's own map and its two
# arrays are read by their headers alone (`_Stream.header`).
_SCALARS = {"max_array_len": 0, "max_map_len": 0, "max_ext_len": 0}

# The first bytes of a map's and an array's header: of one with up to 15 elements (their count
# in the low four bits), then of one whose count follows in 2 bytes and in 4.
_MAP = (0x80, 0xDE, 0xDF)
_ARRAY = (0x90, 0xDC, 0xDD)


class _Stream:
    """The msgpack objects of a value from ``offset`` on, fed a piece at a time: scalars (see
    `_SCALARS`) and headers. Any one object may be as large as the value (the whole-value decode
    allowed that much), no larger."""

    def __init__(self, pieces: Pieces, size: int, offset: int = 0) -> None:
        self._pieces = pieces(offset)
        self._offset = offset
        self._size = size
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(size, 1), **_SCALARS)
        self._feed()  # a small value whole, at once

    def tell(self) -> int:
        return self._offset + int(self._unpacker.tell())

    def _feed(self) -> None:
        piece = next(self._pieces, None)
        if piece is None:
            raise BadLogObject("not msgpack: the value ends inside an object")
        self._unpacker.feed(piece)

    def take(self, n: int) -> list[Any]:
        """The next ``n`` objects, unpacked in C (the unpacker iterates over them)."""
        got = list(itertools.islice(self._unpacker, n))
        while len(got) < n:
            self._feed()
            got += itertools.islice(self._unpacker, n - len(got))
        return got

    def header(self, kind: tuple[int, int, int]) -> int | None:
        """The element count in the header of a map or an array (``kind``: `_MAP` or `_ARRAY`)
        that comes next, or None when something else does. Read here, not by msgpack: its C
        unpacker reads a header with no limit, its pure-Python one applies `_SCALARS` to it."""
        small, wide, wider = kind
        first = self._bytes(1)[0]
        if first & 0xF0 == small:
            return first & 0x0F
        if first not in (wide, wider):
            return None
        return int.from_bytes(self._bytes(2 if first == wide else 4), "big")

    def _bytes(self, n: int) -> bytes:
        got = bytes(self._unpacker.read_bytes(n))
        while len(got) < n:
            self._feed()
            got += self._unpacker.read_bytes(n - len(got))
        return got

    def ended(self) -> bool:
        """Nothing follows what was read (msgpack.unpackb's ExtraData otherwise)."""
        return self.tell() == self._size


@dataclass(frozen=True)
class Stored:
    """A log object's value, its fields checked (`read`); its words and counts are read again,
    and its digest checked, only by `batches`."""

    file: str
    node: int
    request_id: str
    digest: str
    distinct: int
    total: int
    _pieces: Pieces = field(repr=False)
    _size: int
    _words_at: int  # where the first word's bytes start
    _counts_at: int
    # The words and counts of a value that has one batch of them: its first pass held them
    # already, and reading them again was most of the time a small value took.
    _held: tuple[list[bytes], list[int]] | None = field(repr=False)

    def batches(self) -> Iterator[tuple[list[bytes], list[int]]]:
        """The words and their counts, a batch at a time, in order. Raises BadLogObject after
        the last batch when they do not hash to the digest: what was taken from them must then
        be dropped."""
        sha = hashlib.sha256(tally.HEADER)
        for batch in [self._held] if self._held is not None else self._read_batches():
            _hash_lines(sha, *batch)
            yield batch
        if sha.hexdigest() != self.digest:
            raise BadLogObject("log object digest does not match its counts")

    def _read_batches(self) -> Iterator[tuple[list[bytes], list[int]]]:
        words = _Stream(self._pieces, self._size, self._words_at)
        counts = _Stream(self._pieces, self._size, self._counts_at)
        for done in range(0, self.distinct, _BATCH):
            n = min(_BATCH, self.distinct - done)
            yield words.take(n), counts.take(n)

    def summary(self, position: int) -> dict[str, Any]:
        """The catalog's summary, once the digest is checked (raises BadLogObject)."""
        for _ in self.batches():
            pass
        return _summary(position, file=self.file, node=self.node, request_id=self.request_id,
                        total=self.total, distinct=self.distinct, digest=self.digest)  # fmt: skip


def read(pieces: Pieces, size: int) -> Stored:
    """The log object in the ``size`` bytes that ``pieces`` gives, its fields and arrays checked
    (in one pass over the value, a batch at a time). Raises BadLogObject, and nothing else, for
    anything that is not one, but for its digest: `Stored.batches` checks that."""
    try:
        return _read(pieces, size)
    except BadLogObject:  # a ValueError too, but a verdict on the fields, not msgpack's
        raise
    except (ValueError, TypeError) as exc:  # msgpack's FormatError, StackError, bad UTF-8...
        raise BadLogObject(f"not msgpack: {exc}") from exc


def _read(pieces: Pieces, size: int) -> Stored:
    stream = _Stream(pieces, size)
    if stream.header(_MAP) != len(_LAYOUT):
        raise _not_the_layout()
    # The fields before the words, each after its key, then the words' key (the first key
    # alone first: a value with its fields in another order is told so, not by what it holds).
    if stream.take(1) != ["v"]:
        raise _not_the_layout()
    head = ["v", *stream.take(8)]
    if head[0::2] != list(_LAYOUT[:5]):
        raise _not_the_layout()
    version, file, node, rid = head[1::2]
    distinct = stream.header(_ARRAY)
    if distinct is None:
        raise _wrong_types()
    words_at = stream.tell()
    words = _check_words(stream, distinct)
    if stream.take(1) != ["counts"]:
        raise _not_the_layout()
    if stream.header(_ARRAY) != distinct:
        raise _wrong_types()
    counts_at = stream.tell()
    total, counts = _check_counts(stream, distinct)
    key, digest = stream.take(2)
    if key != "digest":
        raise _not_the_layout()
    _check_fields(version, file, node, rid, digest)
    if not stream.ended():
        raise BadLogObject("not msgpack: data after the log object")
    held = (words, counts) if distinct <= _BATCH else None
    return Stored(file, node, rid, digest, distinct, total, pieces, size, words_at, counts_at,
                  held)  # fmt: skip


def _not_the_layout() -> BadLogObject:
    return BadLogObject(f"not a version {VERSION} log object (fields {', '.join(_LAYOUT)})")


def _wrong_types() -> BadLogObject:
    return BadLogObject("log object fields have the wrong types")


def _check_fields(version: Any, file: Any, node: Any, rid: Any, digest: Any) -> None:
    if version != VERSION:
        raise BadLogObject(f"not a version {VERSION} log object")
    if not (type(file) is str and type(node) is int and type(rid) is str and type(digest) is str):
        raise _wrong_types()


def _check_words(stream: _Stream, n: int) -> list[bytes]:
    """The last batch of words."""
    previous: list[bytes] = []
    words: list[bytes] = []
    for done in range(0, n, _BATCH):
        words = stream.take(min(_BATCH, n - done))
        # Checked by C-level maps, not a Python loop per word: a tally has millions of them.
        if not _all_of(bytes, words):
            raise _wrong_types()
        ordered = previous + words  # the last word before this batch too
        if not all(map(operator.lt, ordered, itertools.islice(ordered, 1, None))):
            raise BadLogObject("log object words are not strictly increasing")
        previous = words[-1:]
    return words


def _all_of(kind: type, items: list[Any]) -> bool:
    """Whether every item is exactly of type ``kind`` (a subclass's, as bool's, is not): their
    types counted by identity, not hashed into a set (for a summary's 40,041 words 0.6 against
    0.9 ms, for its counts 0.9 against 1.4 ms, best of 30 runs)."""
    return list(map(type, items)).count(kind) == len(items)


def _check_counts(stream: _Stream, n: int) -> tuple[int, list[int]]:
    """The counts' sum, and their last batch."""
    total = 0
    counts: list[int] = []
    for done in range(0, n, _BATCH):
        counts = stream.take(min(_BATCH, n - done))
        if not _all_of(int, counts) or min(counts) < 1:  # exactly int: True is no count
            raise _wrong_types()
        total += sum(counts)
    return total, counts


def merge(objects: Iterable[LogObject]) -> Counter[bytes]:
    merged: Counter[bytes] = Counter()
    for obj in objects:
        merged.update(dict(zip(obj.words, obj.counts, strict=True)))
    return merged


def show(word: bytes) -> str:
    """A word for people and JSON: UTF-8, with undecodable bytes as backslash escapes."""
    return word.decode("utf-8", "backslashreplace")
