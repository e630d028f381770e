"""Count the words in one byte range of a file, streaming."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from paxmr.wordcount import WHITESPACE

# Small enough that bytes.split()'s list of one chunk stays a few MiB; large enough that the
# per-chunk overhead disappears. Memory then grows only with the number of distinct words.
CHUNK = 1 << 20


def _last_whitespace(data: bytes) -> int:
    return max(data.rfind(w) for w in WHITESPACE)


def count_range(
    path: Path,
    offset: int,
    size: int,
    progress: Callable[[int], None] | None = None,
) -> Counter[bytes]:
    """Words wholly inside ``[offset, offset + size)``; the range must start and end at a cut."""
    counts: Counter[bytes] = Counter()
    carry = b""  # a word cut by the chunk boundary, completed by the next chunk
    done = 0
    with path.open("rb", buffering=0) as f:
        f.seek(offset)
        while done < size:
            chunk = f.read(min(CHUNK, size - done))
            if not chunk:
                break  # the file shrank under us: count what there was
            done += len(chunk)
            data = carry + chunk
            cut = _last_whitespace(data) + 1  # 0 when the chunk is all one word
            counts.update(data[:cut].split())
            carry = data[cut:]
            if progress is not None:
                progress(done)
    if carry:
        counts[carry] += 1
    return counts
