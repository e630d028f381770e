"""Generate realistic text quickly: a Zipf-distributed vocabulary in lines of varied length."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
_LETTER_WEIGHTS = [12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 5.9, 4.3, 4, 2.8, 2.8, 2.4, 2.4, 2.2, 2, 2, 1.9,
                   1.5, 1, 0.8, 0.2, 0.2, 0.1, 0.1]  # fmt: skip
_FOREIGN = ["café", "naïve", "über", "straße", "smörgåsbord", "façade", "日本語", "данные", "λόγος",
            "pão", "ñandú", "crème", "ζωή", "🙂", "中文", "résumé"]  # fmt: skip
_PUNCT = ["", "", "", "", "", ",", ".", ";", ":", "!", "?", "'s", ")"]
_BLOCK = 256 * 1024  # text is built from this many distinct blocks, then sampled
_BLOCKS = 64


def _vocabulary(rng: random.Random, size: int) -> list[bytes]:
    words: set[str] = set(_FOREIGN)
    while len(words) < size:
        length = min(1 + int(rng.gammavariate(2.5, 1.8)), 18)
        word = "".join(rng.choices(_LETTERS, _LETTER_WEIGHTS, k=length))
        if rng.random() < 0.02:
            word += rng.choice(_FOREIGN)
        words.add(word)
    # As in real text, frequent words tend to be short: rank by length, loosely.
    ordered = sorted(sorted(words), key=lambda w: len(w) + rng.uniform(0, 6))
    return [w.encode() for w in ordered]


def _block(rng: random.Random, vocab: list[bytes], cum: list[float]) -> bytes:
    out = bytearray()
    while len(out) < _BLOCK:
        n = rng.randint(3, 18)
        words = rng.choices(vocab, cum_weights=cum, k=n)
        tail = rng.choice(_PUNCT).encode()
        sep = b"\t" if rng.random() < 0.01 else b" "
        out += sep.join(words) + tail
        out += b"\r\n" if rng.random() < 0.02 else b"\n"
    return bytes(out)


def generate(out: Path, size: int, seed: int, vocabulary: int = 60_000) -> int:
    """Write exactly ``size`` bytes (cut at a line end where possible); returns bytes written."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng, vocabulary)
    cum = list(itertools.accumulate(1.0 / (rank + 2.7) ** 1.07 for rank in range(len(vocab))))
    blocks = [_block(rng, vocab, cum) for _ in range(min(_BLOCKS, max(1, size // _BLOCK)))]
    written = 0
    with out.open("wb") as f:
        while written < size:
            block = rng.choice(blocks)
            piece = block[: size - written]
            if len(piece) < len(block):
                cut = piece.rfind(b"\n") + 1
                piece = piece[:cut] if cut else piece
            f.write(piece)
            written += len(piece)
            if not piece:
                break
    return written
