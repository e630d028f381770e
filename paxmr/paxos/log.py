"""The chosen log as a node applies it: strictly in slot order, each request id at most once.

A replica's memory does not grow with the log's values (DESIGN.md): once the driver has made an
applied entry durable it calls `AppliedLog.stored`, and from then on the value lives only in the
driver's store (`LogStore`: SQLite in the PRM), read back for catch-up. In memory stay what the
core decides with: the length, the running digest, the request ids with their positions (a retry
lands at most once), the membership changes (small, few) and the slots of tally chunks. A driver
that never calls `stored` (the simulator, the tests) keeps every value here, as before.

A node starts from a `StoredLog` (that summary, loaded without reading a value) or, in tests,
from the entries themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, overload

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator


# Request ids of membership changes (membership.py) start with this; clients cannot use it.
MEMBERSHIP_PREFIX = "\x1emembership:"
# Request ids of the chunks of a tally too large for one value (see paxmr/chunks.py): no
# position of their own; the entry that commits them has it.
CHUNK_PREFIX = "\x1echunk:"


@dataclass(frozen=True, slots=True)
class Entry:
    """A value proposed for a slot: a client request, a membership change, a chunk of a large
    value, or the no-op that fills a gap."""

    request_id: str
    value: bytes

    @property
    def is_noop(self) -> bool:
        return self.request_id == ""

    @property
    def is_membership(self) -> bool:
        return self.request_id.startswith(MEMBERSHIP_PREFIX)

    @property
    def is_chunk(self) -> bool:
        return self.request_id.startswith(CHUNK_PREFIX)

    @property
    def is_request(self) -> bool:
        """A client's request: it gets a position among applied requests."""
        return not self.is_noop and not self.is_membership and not self.is_chunk


NOOP = Entry("", b"")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """An applied slot. `position` is its index among applied requests; None for a no-op, a
    membership change, a chunk, or a request id already applied in an earlier slot (a retry
    chosen twice)."""

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


class LogStore(Protocol):
    """Where a driver keeps the applied entries it made durable."""

    def read(self, start: int, max_slots: int, max_bytes: int) -> list[LogEntry]:
        """Entries from slot `start` on, in order: at most `max_slots`, and no more than
        `max_bytes` of values (but at least one entry if `start` is stored)."""
        ...


@dataclass
class StoredLog:
    """What a node starts from instead of its applied entries: everything AppliedLog keeps in
    memory, loaded without reading a value (paxmr/storage.py)."""

    store: LogStore
    length: int = 0
    digest: bytes = GENESIS_DIGEST
    requests: list[tuple[str, int, int]] = field(default_factory=list)  # (id, position, slot)
    changes: list[LogEntry] = field(default_factory=list)  # membership entries, values included
    chunks: list[tuple[str, int]] = field(default_factory=list)  # (chunk id, first slot)
    value_bytes: int = 0


class AppliedLog:
    """Applied prefix (slot i at index i) plus chosen slots learned out of order."""

    def __init__(self, entries: Iterable[LogEntry] = (), stored: StoredLog | None = None) -> None:
        self.length = 0
        # request id -> (position, slot) where it was first applied
        self.positions: dict[str, tuple[int, int]] = {}
        self.count = 0
        self.digest = GENESIS_DIGEST
        self.value_bytes = 0  # of every applied value (a log quota's measure)
        self.changes: list[LogEntry] = []  # applied membership entries
        self.chunks: dict[str, int] = {}  # chunk request id -> first slot applied
        self._learned: dict[int, Entry] = {}
        self._store: LogStore | None = None
        self._durable = 0  # slots below this are in the store, and not in _values
        self._values: dict[int, LogEntry] = {}  # applied entries not yet in the store
        if stored is not None:
            self._store = stored.store
            self.length = self._durable = stored.length
            self.digest = stored.digest
            self.value_bytes = stored.value_bytes
            self.positions = {rid: (position, slot) for rid, position, slot in stored.requests}
            self.count = len(stored.requests)
            self.changes = list(stored.changes)
            self.chunks = dict(stored.chunks)
        for entry in entries:
            self._append(entry)

    @property
    def entries(self) -> Sequence[LogEntry]:
        """The applied entries, read from the store where they are no longer in memory."""
        return _Entries(self)

    @property
    def held_bytes(self) -> int:
        """Value bytes of applied entries held in memory (not yet in the driver's store)."""
        return sum(len(e.value) for e in self._values.values())

    def first(self, request_id: str) -> tuple[int | None, int] | None:
        """Where `request_id` was first applied: (position, slot) of a request, (None, slot)
        of a chunk; None if it was not (or is a membership change's)."""
        found = self.positions.get(request_id)
        if found is None and (slot := self.chunks.get(request_id)) is not None:
            return None, slot
        return found

    def knows(self, slot: int) -> bool:
        return slot < self.length or slot in self._learned

    def learned(self, slot: int) -> Entry | None:
        return self._learned.get(slot)

    def learn(self, slot: int, entry: Entry) -> None:
        if slot >= self.length:
            self._learned.setdefault(slot, entry)

    def apply_learned(self, stop: Callable[[Entry], bool] | None = None) -> list[LogEntry]:
        """Apply every learned slot that is now contiguous with the applied prefix, up to and
        including the first entry for which `stop` is true."""
        applied: list[LogEntry] = []
        while (entry := self._learned.pop(self.length, None)) is not None:
            position = None
            if entry.is_request and entry.request_id not in self.positions:
                position = self.count
            log_entry = LogEntry(self.length, entry.request_id, entry.value, position)
            self._append(log_entry)
            applied.append(log_entry)
            if stop is not None and stop(entry):
                break
        return applied

    def read(self, start: int, max_slots: int, max_bytes: int) -> list[LogEntry]:
        """Applied entries from `start` on, as LogStore.read (for catch-up)."""
        stop = min(self.length, start + max_slots)
        found: list[LogEntry] = []
        if start < self._durable and self._store is not None:
            found = self._store.read(start, min(stop, self._durable) - start, max_bytes)
            start += len(found)
            max_bytes -= sum(len(e.value) for e in found)
            if start < self._durable:  # the byte limit ended it
                return found
        for slot in range(start, stop):
            entry = self._values[slot]
            if found and len(entry.value) > max_bytes:
                break
            found.append(entry)
            max_bytes -= len(entry.value)
        return found

    def stored(self, length: int) -> None:
        """The driver's store now holds every slot below `length`: their values leave memory.
        Only for a log restored from a StoredLog (it knows where to read them back)."""
        if self._store is None:
            raise ValueError("stored() needs a log restored from a StoredLog")
        for slot in range(self._durable, length):
            del self._values[slot]
        self._durable = max(self._durable, length)

    def _append(self, entry: LogEntry) -> None:
        if entry.slot != self.length:
            raise ValueError(f"slot {entry.slot} applied at {self.length}")
        self._values[entry.slot] = entry
        self.length += 1
        self.value_bytes += len(entry.value)
        if entry.position is not None:
            self.positions[entry.request_id] = (entry.position, entry.slot)
            self.count += 1
            self.digest = chain_digest(self.digest, entry)
        elif entry.request_id.startswith(MEMBERSHIP_PREFIX):
            self.changes.append(entry)
        elif entry.request_id.startswith(CHUNK_PREFIX):
            self.chunks.setdefault(entry.request_id, entry.slot)


class _Entries(Sequence[LogEntry]):
    """A read-only view of an AppliedLog's entries (tests and the simulator check logs)."""

    def __init__(self, log: AppliedLog) -> None:
        self._log = log

    def __len__(self) -> int:
        return self._log.length

    @overload
    def __getitem__(self, index: int) -> LogEntry: ...
    @overload
    def __getitem__(self, index: slice) -> list[LogEntry]: ...
    def __getitem__(self, index: int | slice) -> LogEntry | list[LogEntry]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._log.length)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            entries = []
            while start < stop:
                batch = self._log.read(start, stop - start, 1 << 62)
                if not batch:
                    raise LookupError(f"slot {start} is applied but not in the store")
                entries += batch
                start += len(batch)
            return entries
        if index < 0:
            index += self._log.length
        if not 0 <= index < self._log.length:
            raise IndexError(index)
        return self._log.read(index, 1, 0)[0]

    def __iter__(self) -> Iterator[LogEntry]:
        for slot in range(self._log.length):
            yield self[slot]
