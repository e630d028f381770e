"""Count the words in one byte range of a file, streaming, with Arrow's compute kernels.

Each chunk of the range is cut after its last whitespace byte, Arrow splits it at ASCII
whitespace and counts the words with a hash aggregation (``ascii_split_whitespace``,
``group_by``), and the per-chunk counts are summed by another ``group_by`` whenever they pile
up. No Python object is made per word, and memory stays one chunk's working set plus the
distinct words, whatever the input size.

A word longer than a chunk (a long run without whitespace) is gathered piece by piece and counted
once it ends, so the work is linear in the input however the words look; such a word is held whole
in memory while it is read (its bytes are the tally's key).

``count_range_reference`` is the plain ``bytes.split()`` + ``Counter`` loop the kernel must equal:
the tests check that, and ``paxmr bench wordcount`` uses it as its baseline.

Why Arrow: candidates measured side by side on 32 MiB of generated text (CPU seconds of one
process, best of 3-4, on this 2-core machine under load 5-12; the scratch scripts and all figures
are in the issue 14 report): ``bytes.split()`` + ``Counter`` 1.52-1.76; this kernel 0.58-0.59
with 2 MiB chunks (0.69 with 1 MiB). Its stages: ``ascii_split_whitespace`` 0.24 (numpy finding
the word bounds alone: 0.27) and a hash ``group_by`` count 0.19-0.25 (``value_counts`` 0.26,
``dictionary_encode`` 0.28-0.32, ``index_in`` a known vocabulary + ``bincount`` 0.26; on
``binary_view`` words ``value_counts`` 0.28-0.31, ``group_by`` 0.99-1.26). Polars (one thread)
splits only valid UTF-8 (a latin-1 detour and a regex: 0.79) and counts slower (``value_counts``
0.51); ``re.findall`` + ``Counter`` 2.31. Arrow is maintained, exact on any bytes, has wheels for
every Python and platform the hosts run (3.11-3.13, x86_64 and aarch64), and costs ~0.3 s to
import (file-backed library pages, shared by the mappers), paid only by the mapper.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Arrow's allocator, chosen before Arrow loads (the variable is read then): jemalloc hands freed
# pages back (see ``frugal``), where the default mimalloc keeps them: ~25 MiB less per process.
# An operator's own setting wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

import pyarrow as pa
import pyarrow.compute as pc

# Acero's plan nodes from the extension module itself: ``Table.group_by`` imports
# ``pyarrow.acero``, which imports ``pyarrow.dataset`` and with it the S3, ORC and Parquet
# encryption modules (16 more shared objects, libarrow_s3 among them); a mapper would carry their
# pages for nothing: 17 MiB of resident memory when the libraries sit in 2 MiB page-cache folios.
from pyarrow._acero import AggregateNodeOptions, Declaration, TableSourceNodeOptions

from paxmr.wordcount import WHITESPACE

# 2 MiB: a chunk's fixed costs (an Arrow call per stage, and its distinct words summed again by
# each compaction) stay small beside its counting time: 15-20% less CPU than 1 MiB chunks, for the
# same peak memory once the compactions are larger too (4 MiB chunks were no faster and cost
# ~10 MiB more).
CHUNK = 2 << 20
# Per-chunk counts are summed into one table once they hold this many rows.
COMPACT_ROWS = 1 << 19

_WHITESPACE_BYTES = [bytes([b]) for b in WHITESPACE]

Source = Path | BinaryIO


def frugal() -> None:
    """Set this process up for counting beside others: one Arrow thread (a mapper is one of
    several processes sharing the cores) and freed memory returned at once, so memory stays flat
    and small. For the mapper service; import this module before anything imports pyarrow."""
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    if pa.default_memory_pool().backend_name == "jemalloc":
        pa.jemalloc_set_decay_ms(0)


@dataclass(frozen=True)
class Counts:
    """Distinct words sorted by their bytes, and their counts, held as Arrow arrays."""

    words: pa.Array  # binary
    counts: pa.Array  # int64

    def __len__(self) -> int:
        return len(self.words)

    def items(self, batch: int = 1 << 16) -> Iterator[tuple[bytes, int]]:
        """(word, count) in word order, converted to Python one batch at a time."""
        for start in range(0, len(self.words), batch):
            words = self.words.slice(start, batch).to_pylist()
            counts = self.counts.slice(start, batch).to_pylist()
            yield from zip(words, counts, strict=True)

    def as_counter(self) -> Counter[bytes]:
        return Counter(dict(self.items()))

    def tally_blocks(self, batch: int = 1 << 16) -> Iterator[bytes]:
        """The tally file's body, ``word TAB count NL`` lines, formatted by Arrow in blocks."""
        for start in range(0, len(self.words), batch):
            words = self.words.slice(start, batch)
            digits = pc.cast(pc.cast(self.counts.slice(start, batch), pa.string()), pa.binary())
            lines = pc.binary_join_element_wise(words, digits, b"\t")
            whole = pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines)
            yield pc.binary_join(whole, b"\n")[0].as_py() + b"\n"


class _Accumulator:
    """Sums tables of (words, counts), compacting them with a group_by as they pile up."""

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []
        self.rows = 0
        self.compact_at = COMPACT_ROWS
        self.edge_words: Counter[bytes] = Counter()  # words cut by a chunk's end, counted aside

    def add_word(self, word: bytes) -> None:
        if word:
            self.edge_words[word] += 1

    def add(self, table: pa.Table) -> None:
        self.parts.append(table)
        self.rows += table.num_rows
        if self.rows >= self.compact_at:
            self.parts = [self._summed()]
            self.rows = self.parts[0].num_rows
            # Amortized linear: the next compaction waits until as many rows again have come.
            self.compact_at = max(COMPACT_ROWS, 2 * self.rows)

    def _summed(self) -> pa.Table:
        if len(self.parts) == 1:
            return self.parts[0]
        return _grouped(pa.concat_tables(self.parts), "counts", "hash_sum")

    def result(self) -> Counts:
        if self.edge_words:
            words, counts = zip(*self.edge_words.items(), strict=True)
            self.add(_table(pa.array(words, pa.binary()), pa.array(counts, pa.int64())))
        if not self.parts:
            return Counts(pa.array([], pa.binary()), pa.array([], pa.int64()))
        table = self._summed().sort_by("words")  # Arrow orders binary by its bytes, as Python
        return Counts(table["words"].combine_chunks(), table["counts"].combine_chunks())


def _table(words: pa.Array | pa.ChunkedArray, counts: pa.Array | pa.ChunkedArray) -> pa.Table:
    return pa.table({"words": words, "counts": counts})


def _grouped(table: pa.Table, column: str | None, function: str) -> pa.Table:
    """``table``'s words with ``function`` (``hash_count_all`` of no column, ``hash_sum`` of
    ``column``) of each: ``Table.group_by``'s hash aggregation, on one thread."""
    target = [] if column is None else [column]
    plan = Declaration.from_sequence(
        [
            Declaration("table_source", TableSourceNodeOptions(table)),
            Declaration(
                "aggregate",
                AggregateNodeOptions([(target, function, None, "counts")], keys=["words"]),
            ),
        ]
    )
    grouped = plan.to_table(use_threads=False)
    return _table(grouped["words"], grouped["counts"])


def _cuts(chunk: bytes, first: bool) -> tuple[int, int]:
    """The positions of ``chunk``'s first (when asked, else 0) and last whitespace bytes, or
    (-1, -1) when it has none. Each input byte is looked at here, once per chunk."""
    last = max(chunk.rfind(w) for w in _WHITESPACE_BYTES)
    if last < 0 or not first:
        return (0 if last >= 0 else -1), last
    return min(i for i in (chunk.find(w, 0, last + 1) for w in _WHITESPACE_BYTES) if i >= 0), last


def _count_words(data: bytes, start: int, end: int) -> pa.Table:
    """Counts of the words of ``data[start:end]``."""
    bounds = pa.array([start, end], pa.int32()).buffers()[1]
    # Viewed as Arrow text without a copy or a UTF-8 check: ascii_split_whitespace looks at
    # single bytes only (ASCII whitespace is exactly bytes.split()'s: 9-13 and 32), so any bytes
    # split as they would in Python; the words go back to binary before they are hashed.
    text = pa.Array.from_buffers(pa.string(), 1, [None, bounds, pa.py_buffer(data)])
    words = pc.list_flatten(pc.ascii_split_whitespace(text)).view(pa.binary())
    # A hash aggregation counts faster than value_counts; whitespace at either end of the text
    # yields an empty "word".
    table = _grouped(pa.table({"words": words}), None, "hash_count_all")
    return table.filter(pc.not_equal(pc.binary_length(table["words"]), 0))


def _opened(source: Source) -> AbstractContextManager[BinaryIO]:
    if isinstance(source, Path):
        return source.open("rb", buffering=0)
    return nullcontext(source)


def count_range_arrow(
    source: Source,
    offset: int,
    size: int,
    progress: Callable[[int], None] | None = None,
) -> Counts:
    """Words wholly inside ``[offset, offset + size)``; the range must start and end at a cut.

    ``source`` is a path or a binary file opened for reading (it is read with seek and read).
    """
    acc = _Accumulator()
    pieces: list[bytes] = []  # a word not ended yet: its bytes so far, with no whitespace
    done = 0
    with _opened(source) as f:
        f.seek(offset)
        while done < size:
            chunk = f.read(min(CHUNK, size - done))
            if not chunk:
                break  # the file shrank under us: count what there was
            done += len(chunk)
            first, last = _cuts(chunk, first=bool(pieces))
            if last < 0:  # the whole chunk continues the current word
                pieces.append(chunk)
            else:
                start = 0
                if pieces:  # the word carried in ends at this chunk's first whitespace
                    start = first
                    pieces.append(chunk[:start])
                    acc.add_word(b"".join(pieces))
                    pieces = []
                if start < last:
                    acc.add(_count_words(chunk, start, last))
                if last + 1 < len(chunk):
                    pieces.append(chunk[last + 1 :])
            if progress is not None:
                progress(done)
    if pieces:
        acc.add_word(b"".join(pieces))
    return acc.result()


def count_range(
    source: Source,
    offset: int,
    size: int,
    progress: Callable[[int], None] | None = None,
) -> Counter[bytes]:
    """``count_range_arrow`` as a Counter (every distinct word becomes a Python object)."""
    return count_range_arrow(source, offset, size, progress).as_counter()


def count_range_reference(
    source: Source,
    offset: int,
    size: int,
    chunk: int = 1 << 20,
) -> Counter[bytes]:
    """The baseline: a streaming ``bytes.split()`` + ``Counter`` loop, the definition of a word
    count that the kernel must equal."""
    counts: Counter[bytes] = Counter()
    carry = b""
    done = 0
    with _opened(source) as f:
        f.seek(offset)
        while done < size:
            data = f.read(min(chunk, size - done))
            if not data:
                break
            done += len(data)
            data = carry + data
            cut = max(data.rfind(w) for w in WHITESPACE) + 1
            counts.update(data[:cut].split())
            carry = data[cut:]
    if carry:
        counts[carry] += 1
    return counts
