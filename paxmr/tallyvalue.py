"""A tally file as a log object's value, encoded a block at a time in bounded memory.

The value is byte for byte what ``msgpack.packb`` makes of the log object's fields at once: a
msgpack map whose keys come in the order v, file, node, rid, words, counts, digest (replicas
stream it by that layout; tests/unit/test_tallyvalue.py proves it). Building that map first holds
every word and count as a Python object, then their copies and the packed value: a 118 MB tally
took its worker to 1,267 MiB. This is paxmr's one encoder of log objects (`_pack`): the
simulator's clients encode tally files with `encode` too (`encode_counts`), and
LogObject.encode packs its fields with it (`encode_fields`).
Here the tally is read in blocks (``tally.blocks``: about a MiB of lines each), and each block's
words, then each block's counts, are packed and handed to ``write`` at once, so memory stays
at a few blocks whatever the tally's size.

msgpack writes an array's length before its items, and words come before counts, so the file
is read three times: the lines are counted, then the words packed, then the counts (a tally
file is on local disk, usually still in the page cache: a pass costs far less than packing).
The words' pass validates the lines as ``tally.parse`` does (same errors); the counts' pass
only cuts them into fields. Both hash the file: a file whose two hashes or whose line counts
differ changed while it was read, and is refused rather than encoded from two different
versions (so the counts are those of the lines validated). That hash is the log object's digest.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgpack

from paxmr.logobject import VERSION
from paxmr.wordcount import tally


@dataclass(frozen=True)
class Encoded:
    """What an encoding wrote: the value's size and SHA-256 (a chunked value's manifest names
    them), the log object's digest and its summary (at position 0, as LogObject.summary)."""

    size: int
    sha256: str
    digest: str
    summary: dict[str, Any]


_MAX_COUNT = 2**64 - 1


def encode(
    f: BinaryIO,
    file: str,
    node: int,
    rid: str,
    write: Callable[[bytes], object],
    *,
    block_bytes: int = tally.BLOCK_BYTES,
) -> Encoded:
    """Encode the tally in ``f`` (a binary file open for reading, read from its start) as the
    log object of ``file``, passing the value to ``write`` in pieces. Raises tally.TallyError
    for a file that is not a valid tally (or that changed while it was read), naming ``file``."""
    f.seek(0)
    lines = max(sum(block.count(b"\n") for block in iter(lambda: f.read(block_bytes), b"")) - 1, 0)
    words_sha, counts_sha = hashlib.sha256(), hashlib.sha256()
    total = 0

    def words() -> Iterator[list[bytes]]:
        for block, _digits in _pass(f, file, block_bytes, lines, words_sha):
            yield block

    def counts() -> Iterator[list[int]]:
        nonlocal total
        line = 2  # of the block's first count (the header is line 1)
        for _words, digits in _pass(f, file, block_bytes, lines, counts_sha, checked=False):
            try:
                numbers = list(map(int, digits))
            except ValueError:  # not the lines the words' pass validated
                raise _changed(file) from None
            if max(numbers, default=0) > _MAX_COUNT:  # msgpack's integers end there, not a tally's
                at = line + next(i for i, n in enumerate(numbers) if n > _MAX_COUNT)
                raise tally.TallyError(f"{file}:{at}: a count over 2**64 - 1 cannot be replicated")
            line += len(numbers)
            total += sum(numbers)
            yield numbers
        if counts_sha.digest() != words_sha.digest():
            raise _changed(file)

    size, sha256 = _pack(file, node, rid, lines, words(), counts(), words_sha.hexdigest, write)
    digest = words_sha.hexdigest()
    summary = {"position": 0, "file": file, "node": node, "words": total, "distinct": lines,
               "digest": digest, "request_id": rid}  # fmt: skip
    return Encoded(size, sha256, digest, summary)


def encode_counts(
    file: str, node: int, rid: str, items: Iterable[tuple[bytes, int]]
) -> tuple[bytes, Encoded]:
    """The value of the log object of (word, count) pairs sorted by word, held in memory (the
    simulator's clients): `encode` reads it from the tally file they make, as a replicate of
    that file would. Raises tally.TallyError for pairs that make no valid tally."""
    data = tally.HEADER + b"".join(b"%s\t%d\n" % item for item in items)
    pieces: list[bytes] = []
    encoded = encode(io.BytesIO(data), file, node, rid, pieces.append)
    return b"".join(pieces), encoded


def encode_fields(  # noqa: PLR0917 - a log object's fields
    file: str, node: int, rid: str, words: Sequence[bytes], counts: Sequence[int], digest: str
) -> bytes:
    """A log object's fields as they are, packed by the same code, unchecked (LogObject.encode:
    tests build values that no tally file makes, to show what a reader refuses)."""
    pieces: list[bytes] = []
    _pack(file, node, rid, len(words), [list(words)], [list(counts)], lambda: digest, pieces.append)
    return b"".join(pieces)


def _pack(  # noqa: PLR0917 - a log object's fields
    file: str,
    node: int,
    rid: str,
    lines: int,
    words: Iterable[list[bytes]],
    counts: Iterable[list[int]],
    digest: Callable[[], str],
    write: Callable[[bytes], object],
) -> tuple[int, str]:
    """Pack a log object of ``lines`` words and counts, given a block at a time (the digest
    asked for once both were packed), passing the value to ``write`` in pieces; its size and
    SHA-256."""
    packer = msgpack.Packer(use_bin_type=True)
    value = hashlib.sha256()
    size = 0

    def out(piece: bytes) -> None:
        nonlocal size
        value.update(piece)
        size += len(piece)
        write(piece)

    def packed_items(items: list[Any]) -> bytes:
        """The items as msgpack packs them in an array, without the array's header."""
        packed: bytes = packer.pack(items)
        return packed[len(packer.pack_array_header(len(items))) :]

    head = ["v", VERSION, "file", file, "node", node, "rid", rid, "words"]
    out(packer.pack_map_header(7) + b"".join(map(packer.pack, head)))
    out(packer.pack_array_header(lines))
    for block in words:
        out(packed_items(block))
    out(packer.pack("counts") + packer.pack_array_header(lines))
    for numbers in counts:
        out(packed_items(numbers))
    out(packer.pack("digest") + packer.pack(digest()))
    return size, value.hexdigest()


def _pass(
    f: BinaryIO,
    file: str,
    block_bytes: int,
    lines: int,
    sha: hashlib._Hash,
    *,
    checked: bool = True,
) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """One pass over the tally, of exactly ``lines`` lines (validated unless not ``checked``):
    its words and counts' digits, a block at a time, the file's bytes added to ``sha``."""

    def read(n: int) -> bytes:
        data = f.read(n)
        sha.update(data)
        return data

    f.seek(0)
    seen = 0
    for words, digits in tally.blocks(read, file, block_bytes, checked=checked):
        seen += len(words)
        if seen > lines:
            raise _changed(file)
        yield words, digits
    if seen != lines:
        raise _changed(file)


def _changed(file: str) -> tally.TallyError:
    return tally.TallyError(f"{file}: changed while it was read; nothing was replicated")
