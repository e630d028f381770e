"""Tallies larger than one log value: the value spans several slots, committed as one object.

A real text's tally outgrows any fixed value limit (a 38 MB source tree has an 8.9 MB tally;
corpora of a few GB have tallies of hundreds of MB). Such a log object's value (its msgpack
encoding, logobject.py) is cut into parts of at most `limits.value_bytes`; each part is replicated
as a *chunk* entry of its own, and then one small *manifest* entry under the client's request id
commits them: it names the parts by the SHA-256 of the whole value and their count, and only the
manifest takes a log position. So:

- every message stays bounded: a chunk is an ordinary value, batched and caught up as any other;
- a node that was down catches up chunks and manifest like any slot, and assembles the object
  from its own log;
- nothing half-made is visible: chunks have no position, and a manifest is applied only after
  its parts (the PRM submits it once each part is chosen); one whose parts are not all in the
  log before it, or do not hash to its digest, shows as an entry with an error on every replica
  alike (as a value that is not a log object does);
- a retry with the same request id lands once: the manifest is an ordinary request (applied at
  most once), and a chunk's request id is its content address (digest of the whole value and
  its index), so a retry skips the chunks already in the log instead of appending them again.
  A retry through another node encodes another value (the node field differs): it replicates
  its own chunks, and the abandoned ones stay in the log without a position.

Abandoned chunks are reclaimed (their values emptied, their bytes no longer counted against
the log's quota) by the log itself, so that every replica reclaims the same chunks at the same
point of the log. A *reclaim* entry (`reclaim_id`, a chunk id of its own: no position) applied at
slot r empties every chunk in a slot below the previous reclaim entry's that no whole manifest
(below) in a slot below r names. Why this is safe:

- replicas agree: which chunks go is a function of the log up to r, the same on every replica,
  whenever each applies it (a node catching up from a peer that reclaimed them receives them
  empty, and empties the same set itself);
- a committed object keeps its bytes: a manifest applied before r names its chunks, so r
  keeps them, and so does every later reclaim entry;
- a manifest that needs a chunk and is still on its way (its client is slow, or a leader
  proposes it just as another node's reclaim entry is proposed) lands before or after r, as the
  log orders them: before r, it keeps its chunks; after r, it finds a chunk empty and shows as
  an entry with an error on every replica alike, never assembled on one and an error on
  another. So a chunk is never reclaimed where a manifest that needs it may still commit
  whole: every manifest after r is refused it, everywhere;
- an honest upload is not hit in practice: its chunks are reclaimed only by the second reclaim
  entry after them, and the leader proposes a reclaim entry at least `timing.chunk_reclaim`
  seconds (an hour by default) after it applied the previous one or started, so an upload
  loses its chunks only if its manifest is chosen that long after them. A retry of a request
  whose chunks from an earlier attempt lie below the last reclaim entry is refused before its
  manifest is submitted (they may be gone before it lands): a new request id gives new chunks.
- two reclaim entries for the same period (two leaders) have the same id: only the first one
  in the log counts.

Only a *whole* manifest keeps its chunks: one whose chunks' first copies before it all hold
their values (as heavy._Parts reads them). A manifest that failed (it came after a reclaim
entry emptied one of its chunks) keeps none, so its other chunks, of no use to any object, leave
the quota like the chunks of an upload cut short, instead of staying for ever. Whether a
manifest is whole is a function of the log, the same on every replica and at every later
reclaim entry: a whole one's chunks are kept by it, so it stays whole; a failed one's missing or
emptied chunk stays so. (A forged manifest whose chunks are all there but do not hash to its
digest fails too, yet keeps them: telling it apart would mean hashing every object at every
reclaim entry.)

Why not the other design, the log entry holding a digest while the bytes move beside the log
(Ratis' DataStream)? It needs a second transfer protocol with its own durability, quorum and
catch-up rules (a value known to one replica only could be chosen and then lost). Chunks reuse
the log's: each chunk is durable on a quorum before the manifest can be chosen, and catch-up,
backup and restore need nothing new. The cost is that a large tally passes through the leader
as several log entries, one commit each.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from paxmr.logobject import BadLogObject, Pieces, feed, pieces_of
from paxmr.paxos import CHUNK_PREFIX

_KIND = "chunked"
_KIND_TEXT = _KIND.encode()


class Parts(Protocol):
    """A manifest's chunks by index, as the log holds them before it: the first copy of each
    (None: not there). An empty copy is one a reclaim entry emptied (or a forged one): not
    there either, as Manifest.pieces reads it, for the PRM (heavy._Parts) and the simulator
    (sim/checker.NodeLog) alike."""

    def __getitem__(self, index: int, /) -> bytes | None: ...


class BadManifest(BadLogObject):
    """A manifest whose chunks do not make the value it names: shown like a bad log object."""


@dataclass(frozen=True)
class Manifest:
    """The entry that commits a chunked value: `file` and `digest` are the log object's (so a
    retry is recognised without assembling it), `sha256` and `parts` name the chunks."""

    file: str
    digest: str
    sha256: str
    parts: int
    size: int

    def chunk_ids(self) -> list[str]:
        return [chunk_id(self.sha256, i) for i in range(self.parts)]

    def encode(self) -> bytes:
        body = {"v": 1, "kind": _KIND, "file": self.file, "digest": self.digest,
                "sha256": self.sha256, "parts": self.parts, "size": self.size}  # fmt: skip
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed

    def pieces(self, parts: Parts) -> Pieces:
        """The whole value, for logobject.read, from its parts in order (None or empty: not in
        the log before the manifest, Parts), read a part at a time: each pass over the value
        reads them again, so a lazy `parts` (heavy._Parts) holds one at a time. Raises
        BadManifest when they are not the value it names."""
        sha = hashlib.sha256()
        ends: list[int] = []  # where each part ends in the value
        for i in range(self.parts):
            part = parts[i]
            if not part:  # None or empty (Parts)
                raise BadManifest(
                    f"chunk {i} of {self.parts} is not in the log before it (or was"
                    " reclaimed: never committed by a manifest in time)"
                )
            sha.update(part)
            ends.append((ends[-1] if ends else 0) + len(part))
        if ends[-1] != self.size or sha.hexdigest() != self.sha256:
            raise BadManifest("its chunks do not hash to its digest")

        def read(offset: int) -> Iterator[memoryview]:
            first = bisect.bisect_right(ends, offset)  # the part that holds byte `offset`
            start = offset - (ends[first - 1] if first else 0)
            for i in range(first, self.parts):
                part = parts[i]
                if part is None or len(part) != ends[i] - (ends[i - 1] if i else 0):
                    # Not a verdict on the value: its reader must read one snapshot of the log.
                    raise RuntimeError(f"chunk {i} changed while its manifest was read")
                yield from feed(part, start if i == first else 0)

        return read


def object_pieces(
    value: bytes, parts: Callable[[Manifest], Parts] | None = None
) -> tuple[Pieces, int]:
    """The log object a log entry's value holds, as logobject.read takes it (pieces, size):
    the value itself, or for a manifest the value its chunks make, which `parts` finds in the
    log before it (none found without `parts`). Raises BadManifest (a BadLogObject) for a
    manifest whose chunks are missing or are not its value."""
    found = manifest(value)
    if found is None:
        return pieces_of(value), len(value)
    return found.pieces(parts(found) if parts is not None else [None] * found.parts), found.size


def chunk_id(sha256: str, index: int) -> str:
    return f"{CHUNK_PREFIX}{sha256}/{index}"


_RECLAIM = f"{CHUNK_PREFIX}reclaim/"


def reclaim_id(previous: int | None) -> str:
    """The request id of the reclaim entry that follows the one applied at slot `previous`
    (None: the first): the same for every proposer of the same period."""
    return f"{_RECLAIM}{-1 if previous is None else previous}"


def is_reclaim(request_id: str) -> bool:
    return request_id.startswith(_RECLAIM)


def kept(manifests: Iterable[tuple[int, bytes]], first: Mapping[str, tuple[int, bool]]) -> set[str]:
    """The chunk ids that the whole manifests among `manifests` ((slot, value) pairs; other
    values name none) name. `first` gives each chunk id in the log the slot of its first copy
    and whether that copy holds its value: a manifest whose chunk has no such copy before it
    failed (heavy._Parts), and keeps none."""
    ids: set[str] = set()
    for slot, value in manifests:
        found = manifest(value)
        if found is None:
            continue
        names = found.chunk_ids()
        copies = [first.get(cid) for cid in names]
        if all(c is not None and c[0] < slot and c[1] for c in copies):
            ids.update(names)
    return ids


def split(value: bytes, file: str, digest: str, part_bytes: int) -> tuple[Manifest, list[bytes]]:
    """A value cut into parts of at most `part_bytes`, and the manifest that commits them."""
    parts = [value[i : i + part_bytes] for i in range(0, len(value), part_bytes)]
    sha = hashlib.sha256(value).hexdigest()
    return manifest_of(file, digest, sha, len(value), part_bytes), parts


def manifest_of(file: str, digest: str, sha256: str, size: int, part_bytes: int) -> Manifest:
    """The manifest of a value of `size` bytes with this SHA-256, cut into parts of at most
    `part_bytes` (part i is the value's bytes from i * part_bytes on): the PRM reads each part
    from where it spooled the value, never holding the whole of it."""
    return Manifest(file, digest, sha256, -(-size // part_bytes), size)


# A manifest is small: anything larger is not one (checked before decoding). And it names at
# most this many parts (of value_bytes each: terabytes), so a forged one cannot make a reader
# list billions of them.
MAX_MANIFEST = 1024
_MAX_PARTS = 1 << 16


def manifest(value: bytes) -> Manifest | None:
    """The manifest in `value`, or None if it is not one (a log object, or anything else)."""
    # Told at a glance without decoding: a manifest's "kind" is a msgpack string, whose bytes
    # are its UTF-8 text (every replica and the leader ask this of every small value they
    # apply, twice: the decode took 5 us of a 178-byte log object, this 0.1).
    if len(value) > MAX_MANIFEST or _KIND_TEXT not in value:
        return None
    try:
        body: Any = msgpack.unpackb(value, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.StackError):
        return None
    if not isinstance(body, dict) or body.get("kind") != _KIND or body.get("v") != 1:
        return None
    fields: dict[str, Any] = {k: body.get(k) for k in ("file", "digest", "sha256", "parts", "size")}
    if not (
        all(type(fields[k]) is str for k in ("file", "digest", "sha256"))
        and all(type(fields[k]) is int and fields[k] > 0 for k in ("parts", "size"))
        and len(fields["sha256"]) == 64  # a SHA-256 in hex
        and fields["parts"] <= min(_MAX_PARTS, fields["size"])
    ):
        return None
    return Manifest(**fields)
