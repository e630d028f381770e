"""A tally file as a log object's value, encoded a block at a time in bounded memory.

The value is byte for byte what ``msgpack.packb`` makes of the log object's fields at once: a
msgpack map whose keys come in the order v, file, node, rid, words, counts, digest (replicas
stream it by that layout; tests/unit/test_tallyvalue.py proves it). Building that map first holds
every word and count as a Python object, then their copies and the packed value: a 118 MB tally
took its worker to 1,267 MiB. This is paxmr's one encoder of log objects (`_pack`): a
small tally, which the PRM reads whole, goes through it in one pass (`encode_whole`), as the
simulator's clients' tally files do (`encode_counts`), and LogObject.encode packs its fields
with it (`encode_fields`).
Here the tally is read in blocks (``tally.blocks``: about a MiB of lines each), and each block's
words are packed and handed to ``write`` at once, its counts packed aside (below), so memory
stays at a few blocks whatever the tally's size.

msgpack writes an array's length before its items, and words come before counts, so the file
is read twice: its lines are counted (one ``bytes.count`` per block), then read once, validated
as ``tally.parse`` validates them (same errors) and hashed (the log object's digest), the words
of each block packed into the value as they come and its counts packed into a spill file (held
in memory up to a block's size) that follows them. A file changed while it was read is refused
when its line count differs from the first pass's, or its size from the one its caller checked
(neither pass reads more than a byte past it: a file checked at 60 KB, for the PRM's event loop,
then appended to was read and encoded whole, 24 MB); else the value is the lines the second pass
validated and hashed, never words from one version and counts from another. (Three passes
before, the counts' cutting every line again: 23-32 ms of CPU for a 337 KB tally of 40,041
words, against 15-16 ms.)
"""

from __future__ import annotations

import hashlib
import io
import tempfile
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
    size: int,
    block_bytes: int = tally.BLOCK_BYTES,
    spill: str | None = None,
) -> Encoded:
    """Encode the tally in ``f`` (a binary file open for reading, read from its start, of
    ``size`` bytes where the caller checked it) as the log object of ``file``, passing the
    value to ``write`` in pieces. Raises tally.TallyError for a file that is not a valid tally
    (or that changed while it was read, its size included), naming ``file``.
    The packed counts wait in memory up to ``block_bytes``, then in an unnamed file in the
    directory ``spill`` (None: the system's temporary directory)."""
    read = _reader(f, file, size)
    lines = max(sum(block.count(b"\n") for block in iter(lambda: read(block_bytes), b"")) - 1, 0)
    sha = hashlib.sha256()
    total = 0
    with tempfile.SpooledTemporaryFile(block_bytes, dir=spill) as packed_counts:

        def words() -> Iterator[list[bytes]]:
            nonlocal total
            line = 2  # of the block's first count (the header is line 1)
            for block, digits in _pass(_reader(f, file, size), file, block_bytes, lines, sha):
                numbers = list(map(_NUMBERS.__getitem__, digits))
                packed = _packed_counts(numbers, file, line)
                line += len(numbers)
                total += sum(numbers)
                packed_counts.write(packed)
                yield block

        def counts() -> Iterator[bytes]:
            packed_counts.seek(0)
            return iter(lambda: packed_counts.read(block_bytes), b"")

        size, sha256 = _pack(file, node, rid, lines, words(), counts, sha.hexdigest, write)
    digest = sha.hexdigest()
    return Encoded(
        size, sha256, digest, _summary(file, node, rid, total=total, distinct=lines, digest=digest)
    )


def encode_whole(
    f: BinaryIO, file: str, node: int, rid: str, *, size: int
) -> tuple[bytes, Encoded]:
    """A small tally in ``f`` (``size`` bytes where the caller checked it, read from its start)
    read at once and encoded in one pass (`encode_held`): the value and what `encode` says of
    it, with the same errors (a file of another size than ``size`` is refused unread past one
    byte more). The PRM's event loop encodes a tally of up to 64 KiB so: `encode`'s two passes,
    its spill file and its reader's closures are there to bound the memory of a large one, and
    cost a 3-word tally 57 us against 15."""
    read = _reader(f, file, size)
    return encode_held(b"".join(iter(lambda: read(size + 1), b"")), file, node, rid)


def encode_held(data: bytes, file: str, node: int, rid: str) -> tuple[bytes, Encoded]:
    """The value of the log object of a whole tally file's bytes held in memory, and what
    `encode` says of it (the same value and errors: tests/unit/test_tallyvalue.py). One pass:
    its lines are counted as they are parsed, and a valid tally's digest is its bytes' SHA-256."""
    words: list[bytes] = []
    numbers: list[int] = []
    for block_words, digits in tally.blocks(io.BytesIO(data).read, file, max(len(data), 1)):
        words += block_words
        numbers += map(_NUMBERS.__getitem__, digits)
    packed = _packed_counts(numbers, file, 2)
    digest = hashlib.sha256(data).hexdigest()
    pieces: list[bytes] = []
    size, sha256 = _pack(file, node, rid, len(words), [words], lambda: [packed], lambda: digest,
                         pieces.append)  # fmt: skip
    summary = _summary(file, node, rid, total=sum(numbers), distinct=len(words), digest=digest)
    return b"".join(pieces), Encoded(size, sha256, digest, summary)


def _summary(
    file: str, node: int, rid: str, *, total: int, distinct: int, digest: str
) -> dict[str, Any]:
    return {"position": 0, "file": file, "node": node, "words": total, "distinct": distinct,
            "digest": digest, "request_id": rid}  # fmt: skip


def _packed_counts(numbers: list[int], file: str, line: int) -> bytes:
    """The counts packed (`_packed_items`); the first of them is on ``line`` of ``file``."""
    try:
        return _packed_items(numbers)
    except OverflowError:  # msgpack's integers end at 2**64 - 1
        at = line + next(i for i, n in enumerate(numbers) if n > _MAX_COUNT)
        raise tally.TallyError(
            f"{file}:{at}: a count over 2**64 - 1 cannot be replicated"
        ) from None


class _Numbers(dict[bytes, int]):
    """A count by its digits: looked up for the counts most words have (a third of the CPU
    ``int`` takes), converted for the others."""

    def __missing__(self, digits: bytes) -> int:
        return int(digits)


_NUMBERS = _Numbers((b"%d" % n, n) for n in range(1, 1 << 12))


def encode_counts(
    file: str, node: int, rid: str, items: Iterable[tuple[bytes, int]]
) -> tuple[bytes, Encoded]:
    """The value of the log object of (word, count) pairs sorted by word, held in memory (the
    simulator's clients): encoded from the tally file they make, as a replicate of that file
    would (`encode_held`). Raises tally.TallyError for pairs that make no valid tally."""
    return encode_held(tally.HEADER + b"".join(b"%s\t%d\n" % item for item in items), file,
                       node, rid)  # fmt: skip


def encode_fields(  # noqa: PLR0917 - a log object's fields
    file: str, node: int, rid: str, words: Sequence[bytes], counts: Sequence[int], digest: str
) -> bytes:
    """A log object's fields as they are, packed by the same code, unchecked (LogObject.encode:
    tests build values that no tally file makes, to show what a reader refuses)."""
    pieces: list[bytes] = []
    packed_counts = [_packed_items(list(counts))]
    _pack(file, node, rid, len(words), [list(words)], lambda: packed_counts, lambda: digest,
          pieces.append)  # fmt: skip
    return b"".join(pieces)


def _packed_items(items: list[Any]) -> bytes:
    """The items as msgpack packs them in an array, without the array's header."""
    packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(items)
    return packed[len(packer.pack_array_header(len(items))) :]


def _pack(  # noqa: PLR0917 - a log object's fields
    file: str,
    node: int,
    rid: str,
    lines: int,
    words: Iterable[list[bytes]],
    counts: Callable[[], Iterable[bytes]],
    digest: Callable[[], str],
    write: Callable[[bytes], object],
) -> tuple[int, str]:
    """Pack a log object of ``lines`` words and counts (the words given a block at a time,
    then the counts asked for, already packed, and the digest), passing the value to
    ``write`` in pieces; its size and SHA-256."""
    packer = msgpack.Packer(use_bin_type=True)
    value = hashlib.sha256()
    size = 0

    def out(piece: bytes) -> None:
        nonlocal size
        value.update(piece)
        size += len(piece)
        write(piece)

    head = ["v", VERSION, "file", file, "node", node, "rid", rid, "words"]
    out(packer.pack_map_header(7) + b"".join(map(packer.pack, head)))
    out(packer.pack_array_header(lines))
    for block in words:
        out(_packed_items(block))
    out(packer.pack("counts") + packer.pack_array_header(lines))
    for piece in counts():
        out(piece)
    out(packer.pack("digest") + packer.pack(digest()))
    return size, value.hexdigest()


def _reader(f: BinaryIO, file: str, size: int) -> Callable[[int], bytes]:
    """A pass's reader of ``f`` from its start: ``read(n)``, its next bytes (at most n, b"" at
    its end), refusing it as changed past ``size`` bytes (read no further) or ended before."""
    f.seek(0)
    got = 0

    def read(n: int) -> bytes:
        nonlocal got
        data = f.read(min(n, size + 1 - got))
        got += len(data)
        if got > size or (not data and got < size):
            raise _changed(file)
        return data

    return read


def _pass(
    read: Callable[[int], bytes], file: str, block_bytes: int, lines: int, sha: hashlib._Hash
) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """The pass over the tally (``read``: `_reader`'s), of exactly ``lines`` lines, validated:
    its words and counts' digits, a block at a time, the file's bytes added to ``sha``."""

    def hashed(n: int) -> bytes:
        data = read(n)
        sha.update(data)
        return data

    seen = 0
    for words, digits in tally.blocks(hashed, file, block_bytes):
        seen += len(words)
        if seen > lines:
            raise _changed(file)
        yield words, digits
    if seen != lines:
        raise _changed(file)


def _changed(file: str) -> tally.TallyError:
    return tally.TallyError(f"{file}: changed while it was read; nothing was replicated")
