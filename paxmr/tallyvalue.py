"""A tally file as a log object's value, encoded a block at a time in bounded memory.

The value is byte for byte ``LogObject.from_tally_bytes(data, file, node, rid).encode()``: a
msgpack map whose keys come in the order v, file, node, rid, words, counts, digest (replicas
stream it by that layout). Building that object first holds every word and count as a Python
object, then their copies and the packed value: a 118 MB tally took its worker to 1,267 MiB.
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
from collections.abc import Callable
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

    f.seek(0)
    lines = max(sum(block.count(b"\n") for block in iter(lambda: f.read(block_bytes), b"")) - 1, 0)
    head = ["v", VERSION, "file", file, "node", node, "rid", rid, "words"]
    out(packer.pack_map_header(7) + b"".join(map(packer.pack, head)))
    out(packer.pack_array_header(lines))
    digest = _pass(f, file, block_bytes, lines, lambda w, _d: out(packed_items(w)))
    out(packer.pack("counts") + packer.pack_array_header(lines))
    total = 0

    def counts(_words: list[bytes], digits: list[bytes]) -> None:
        nonlocal total
        try:
            numbers = list(map(int, digits))
        except ValueError:  # not the lines the words' pass validated
            raise _changed(file) from None
        total += sum(numbers)
        try:
            out(packed_items(numbers))
        except OverflowError:  # msgpack's integers end at 2**64 - 1; a tally's do not
            raise tally.TallyError(f"{file}: a count over 2**64 - 1 cannot be replicated") from None

    if _pass(f, file, block_bytes, lines, counts, checked=False) != digest:
        raise _changed(file)
    out(packer.pack("digest") + packer.pack(digest))
    summary = {"position": 0, "file": file, "node": node, "words": total, "distinct": lines,
               "digest": digest, "request_id": rid}  # fmt: skip
    return Encoded(size, value.hexdigest(), digest, summary)


def _pass(
    f: BinaryIO,
    file: str,
    block_bytes: int,
    lines: int,
    each: Callable[[list[bytes], list[bytes]], None],
    *,
    checked: bool = True,
) -> str:
    """One pass over the tally, of exactly ``lines`` lines (validated unless not ``checked``):
    ``each(words, digits)`` for every block; returns the file's SHA-256."""
    sha = hashlib.sha256()

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
        each(words, digits)
    if seen != lines:
        raise _changed(file)
    return sha.hexdigest()


def _changed(file: str) -> tally.TallyError:
    return tally.TallyError(f"{file}: changed while it was read; nothing was replicated")
