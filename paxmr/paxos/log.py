"""The chosen log as a node applies it: strictly in slot order, each request id at most once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


# Request ids of membership changes (membership.py) start with this; clients cannot use it.
MEMBERSHIP_PREFIX = "\x1emembership:"


@dataclass(frozen=True, slots=True)
class Entry:
    """A value proposed for a slot: a client request, a membership change, or the no-op that
    fills a gap."""

    request_id: str
    value: bytes

    @property
    def is_noop(self) -> bool:
        return self.request_id == ""

    @property
    def is_membership(self) -> bool:
        return self.request_id.startswith(MEMBERSHIP_PREFIX)

    @property
    def is_request(self) -> bool:
        """A client's request: it gets a position among applied requests."""
        return not self.is_noop and not self.is_membership


NOOP = Entry("", b"")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """An applied slot. `position` is its index among applied requests; None for a no-op, a
    membership change, or a request id already applied in an earlier slot (a retry chosen
    twice)."""

    slot: int
    request_id: str
    value: bytes
    position: int | None


GENESIS_DIGEST = bytes(32)


def chain_digest(previous: bytes, entry: LogEntry) -> bytes:
    """Running SHA-256 over applied requests: equal logs (as users see them) give equal digests."""
    if entry.position is None:
        return previous
    rid = entry.request_id.encode()
    h = hashlib.sha256(previous)
    h.update(entry.position.to_bytes(8, "big"))
    h.update(len(rid).to_bytes(4, "big") + rid)
    h.update(len(entry.value).to_bytes(8, "big") + entry.value)
    return h.digest()


class AppliedLog:
    """Applied prefix (slot i at index i) plus chosen slots learned out of order."""

    def __init__(self, entries: Iterable[LogEntry] = ()) -> None:
        self.entries: list[LogEntry] = []
        # request id -> (position, slot) where it was first applied
        self.positions: dict[str, tuple[int, int]] = {}
        self.count = 0
        self.digest = GENESIS_DIGEST
        self._learned: dict[int, Entry] = {}
        for entry in entries:
            self._append(entry)

    @property
    def length(self) -> int:
        return len(self.entries)

    def knows(self, slot: int) -> bool:
        return slot < len(self.entries) or slot in self._learned

    def learned(self, slot: int) -> Entry | None:
        return self._learned.get(slot)

    def learn(self, slot: int, entry: Entry) -> None:
        if slot >= len(self.entries):
            self._learned.setdefault(slot, entry)

    def apply_learned(self, stop: Callable[[Entry], bool] | None = None) -> list[LogEntry]:
        """Apply every learned slot that is now contiguous with the applied prefix, up to and
        including the first entry for which `stop` is true."""
        applied: list[LogEntry] = []
        while (entry := self._learned.pop(len(self.entries), None)) is not None:
            position = None
            if entry.is_request and entry.request_id not in self.positions:
                position = self.count
            log_entry = LogEntry(len(self.entries), entry.request_id, entry.value, position)
            self._append(log_entry)
            applied.append(log_entry)
            if stop is not None and stop(entry):
                break
        return applied

    def _append(self, entry: LogEntry) -> None:
        self.entries.append(entry)
        if entry.position is not None:
            self.positions[entry.request_id] = (entry.position, entry.slot)
            self.count += 1
            self.digest = chain_digest(self.digest, entry)
