"""The log object: one node's reduced tally as it is replicated into the log.

Encoded with msgpack (words are bytes, so text that is not UTF-8 survives exactly). ``digest`` is
the SHA-256 of the tally in its file format, so an operator can check an entry against the
``{F}_reduced`` file it came from with ``sha256sum``; decoding re-computes and checks it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from paxmr.wordcount import tally

VERSION = 1


class BadLogObject(ValueError):
    pass


def _digest(words: Sequence[bytes], counts: Sequence[int]) -> str:
    lines = b"".join([b"%s\t%d\n" % item for item in zip(words, counts, strict=True)])
    return hashlib.sha256(tally.HEADER + lines).hexdigest()


@dataclass(frozen=True)
class LogObject:
    file: str
    node: int
    request_id: str
    words: tuple[bytes, ...]  # strictly increasing
    counts: tuple[int, ...]
    digest: str

    @classmethod
    def from_tally(cls, path: Path | BinaryIO, file: str, node: int, request_id: str) -> LogObject:
        """Raises ``tally.TallyError`` when ``path`` is not a valid tally."""
        items = list(tally.iterate(path, file))
        words = tuple(w for w, _ in items)
        counts = tuple(n for _, n in items)
        return cls(file, node, request_id, words, counts, _digest(words, counts))

    def encode(self) -> bytes:
        body = {
            "v": VERSION,
            "file": self.file,
            "node": self.node,
            "rid": self.request_id,
            "words": list(self.words),
            "counts": list(self.counts),
            "digest": self.digest,
        }
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed

    @classmethod
    def decode(cls, value: bytes) -> LogObject:
        try:
            body: Any = msgpack.unpackb(value, raw=False)
            if body["v"] != VERSION:
                raise BadLogObject(f"log object version {body['v']} is not {VERSION}")
            obj = cls(
                str(body["file"]),
                int(body["node"]),
                str(body["rid"]),
                tuple(body["words"]),
                tuple(body["counts"]),
                str(body["digest"]),
            )
        except (ValueError, KeyError, TypeError, msgpack.ExtraData) as exc:
            raise BadLogObject(f"not a log object: {exc}") from exc
        if _digest(obj.words, obj.counts) != obj.digest:
            raise BadLogObject("log object digest does not match its counts")
        return obj

    @property
    def total(self) -> int:
        return sum(self.counts)

    def summary(self, position: int) -> dict[str, Any]:
        return {
            "position": position,
            "file": self.file,
            "node": self.node,
            "words": self.total,
            "distinct": len(self.words),
            "digest": self.digest,
            "request_id": self.request_id,
        }


def merge(objects: Iterable[LogObject]) -> Counter[bytes]:
    merged: Counter[bytes] = Counter()
    for obj in objects:
        merged.update(dict(zip(obj.words, obj.counts, strict=True)))
    return merged


def show(word: bytes) -> str:
    """A word for people and JSON: UTF-8, with undecodable bytes as backslash escapes."""
    return word.decode("utf-8", "backslashreplace")
