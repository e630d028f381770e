"""What a replica shows of its applied log: one summary per position, and the log's digest.

The PRM and the simulator apply every chosen entry through `Catalog.apply`, so a value that
would crash one crashes the other. Applying never raises: a chosen value is whatever a proposer
put in the log (a peer holding the cluster key can forge one), and a replica that failed on it
would fail again on every restart, as would every other replica.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from paxmr import chunks, logobject, paxos
from paxmr.logobject import BadLogObject

if TYPE_CHECKING:
    from collections.abc import Callable

    from paxmr.chunks import Manifest, Parts


class Catalog:
    def __init__(self, digest: bytes = paxos.GENESIS_DIGEST) -> None:
        self.digest = digest  # of the log shown so far (a restored one starts with its own)
        self.summaries: list[dict[str, Any]] = []  # by position

    def apply(
        self,
        entry: paxos.LogEntry,
        parts: Callable[[Manifest], Parts] | None = None,
    ) -> dict[str, Any] | None:
        """Add an applied entry; return its summary, with an "error" for a value that is not a
        log object (it keeps its position, so positions agree on every replica). `parts` finds
        a manifest's chunks (summarize)."""
        if entry.position is None:
            return self.record(entry, None)
        return self.record(entry, summarize(entry.value, entry.position, parts))

    def record(
        self, entry: paxos.LogEntry, summary: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Add an applied entry whose `summarize` was computed elsewhere (the PRM computes
        large ones in a worker process); None for a no-op or a duplicate."""
        self.digest = paxos.chain_digest(self.digest, entry)
        if entry.position is None or summary is None:
            return None
        return self.show(summary, entry.slot)

    def show(self, summary: dict[str, Any], slot: int) -> dict[str, Any]:
        """Show the next position's summary (its digest is already counted)."""
        summary["slot"] = slot
        self.summaries.append(summary)
        return summary


def summarize(
    value: bytes, position: int, parts: Callable[[Manifest], Parts] | None = None
) -> dict[str, Any]:
    """What a catalog shows of the value applied at `position`; never raises. A manifest
    (chunks.py) is read from the chunks `parts` finds for it (chunks.object_pieces), a part
    at a time."""
    try:
        return logobject.read(*chunks.object_pieces(value, parts)).summary(position)
    except BadLogObject as exc:
        return {"position": position, "file": None, "words": 0, "error": str(exc)}
