"""The invariants, checked as effects are released (safety) and at quiescence (the rest)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from paxmr.catalog import Catalog
from paxmr.paxos import CHUNK_PREFIX, GENESIS_DIGEST, chain_digest

if TYPE_CHECKING:
    from paxmr.paxos import Committed, LogEntry


def _show(value: tuple[str, bytes]) -> str:
    rid, data = value
    return f"{rid or 'no-op'!r} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]})"


class NodeLog:
    """What one node has applied, as the service would have shown it: the entries, and the
    PRM's own catalog of them (a PRM rebuilds it from its log at every start)."""

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self.digest = GENESIS_DIGEST
        self.count = 0
        self.catalog = Catalog()
        self.chunks: dict[str, bytes] = {}  # chunk id -> its first copy (chunks.Parts)

    def append(self, entry: LogEntry) -> None:
        self.entries.append(entry)
        self.digest = chain_digest(self.digest, entry)
        if entry.position is not None:
            self.count += 1
        if entry.request_id.startswith(CHUNK_PREFIX):
            self.chunks.setdefault(entry.request_id, entry.value)
        self.catalog.apply(entry, lambda m: [self.chunks.get(c) for c in m.chunk_ids()])


class Checker:
    def __init__(self) -> None:
        self.violations: list[str] = []
        self.submitted: dict[str, bytes] = {}
        self.chosen: dict[int, tuple[str, bytes]] = {}
        self.first_slot: dict[str, int] = {}
        self.acked: dict[str, tuple[int | None, int]] = {}
        # Chunked requests: what each shows once applied (its log object's summary).
        self.objects: dict[str, dict[str, Any]] = {}

    def fail(self, message: str) -> None:
        self.violations.append(message)

    def submit(self, request_id: str, value: bytes) -> None:
        self.submitted[request_id] = value

    def applied(self, node: int, log: NodeLog, entry: LogEntry) -> None:
        if entry.slot != len(log.entries):
            self.fail(f"order: node {node} applied slot {entry.slot} at {len(log.entries)}")
        self.learned(node, entry)
        self._append(node, log, entry)

    def restored(self, node: int, entries: list[LogEntry]) -> NodeLog:
        """A node's log as it starts from its disk."""
        log = NodeLog()
        for entry in entries:
            self.learned(node, entry)
            self._append(node, log, entry)
        return log

    def _append(self, node: int, log: NodeLog, entry: LogEntry) -> None:
        try:
            log.append(entry)
        except Exception as exc:  # what would crash-loop a PRM
            self.fail(f"crash: node {node} raised {exc!r} applying slot {entry.slot}")

    def learned(self, node: int, entry: LogEntry) -> None:
        """Agreement, validity and no duplicates for one slot a node holds."""
        value = (entry.request_id, entry.value)
        known = self.chosen.setdefault(entry.slot, value)
        if known != value:
            self.fail(
                f"agreement: node {node} has {_show(value)} in slot {entry.slot},"
                f" not {_show(known)}"
            )
        if entry.request_id:
            if self.submitted.get(entry.request_id) != entry.value:
                self.fail(f"validity: slot {entry.slot} holds an unsubmitted {_show(value)}")
        elif entry.value:
            self.fail(f"validity: no-op in slot {entry.slot} carries a value")
        if entry.request_id.startswith(CHUNK_PREFIX) and entry.position is not None:
            self.fail(f"chunk: slot {entry.slot} holds a chunk at position {entry.position}")
        if entry.position is not None:
            first = self.first_slot.setdefault(entry.request_id, entry.slot)
            if first != entry.slot:
                self.fail(f"duplicate: {entry.request_id} applied in slots {first}, {entry.slot}")

    def committed(self, node: int, request_id: str, outcome: Committed) -> None:
        ack = (outcome.position, outcome.slot)
        if self.acked.setdefault(request_id, ack) != ack:
            self.fail(f"duplicate: {request_id} acknowledged at {self.acked[request_id]}, {ack}")
        if self.chosen.get(outcome.slot, (request_id,))[0] != request_id:
            self.fail(f"ack: node {node} acknowledged {request_id} at a slot holding another")

    def final(self, logs: dict[int, NodeLog]) -> None:
        """Durability of acknowledged requests and convergence, at quiescence."""
        for rid, (position, slot) in sorted(self.acked.items()):
            for node, log in logs.items():
                entry = log.entries[slot] if slot < len(log.entries) else None
                if entry is None or entry.request_id != rid or entry.position != position:
                    self.fail(f"durability: node {node} lost acknowledged {rid} (slot {slot})")
        for rid, shown in sorted(self.objects.items()):  # assembled alike everywhere
            position = self.acked.get(rid, (None,))[0]
            for node, log in logs.items():
                if position is None:
                    continue
                got = dict(log.catalog.summaries[position])
                got.pop("slot", None)
                if got != {**shown, "position": position}:
                    self.fail(f"chunked: node {node} shows {rid} as {got}")
        digests = {(log.digest, log.count) for log in logs.values()}
        if len(digests) > 1:
            counts = {node: log.count for node, log in logs.items()}
            self.fail(f"convergence: nodes differ at quiescence (requests applied: {counts})")
