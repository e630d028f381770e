"""The applied log kept in storage: a node restored without its values decides as one restored
with them, serves catch-up from storage, and lets values leave memory once they are stored."""

from __future__ import annotations

from pathlib import Path

from paxmr.paxos import CHUNK_PREFIX, MEMBERSHIP_PREFIX, Entry, LogEntry, Persist
from paxmr.paxos.log import AppliedLog
from paxmr.storage import Storage

ENTRIES = [
    LogEntry(0, "a", b"alpha" * 100, 0),
    LogEntry(1, "", b"", None),
    LogEntry(2, MEMBERSHIP_PREFIX + "m", b'{"voters": [1]}', None),
    LogEntry(3, CHUNK_PREFIX + "c/0", b"chunk" * 50, None),
    LogEntry(4, "a", b"alpha" * 100, None),  # a retry chosen twice
    LogEntry(5, CHUNK_PREFIX + "c/0", b"chunk" * 50, None),
    LogEntry(6, "b", b"beta" * 100, 1),
]


def _stored(tmp_path) -> Storage:
    storage = Storage.open(tmp_path / "log.db", bootstrap=True)
    storage.commit(Persist(log=ENTRIES[:4]))
    storage.commit(Persist(log=ENTRIES[4:]))
    return storage


def test_a_log_restored_without_values_is_the_log_restored_with_them(tmp_path):
    storage = _stored(tmp_path)
    full = AppliedLog(storage.load().log)
    light = storage.load(values=False)
    assert light.log == []
    assert light.stored is not None
    restored = AppliedLog((), light.stored)
    for attr in ("length", "positions", "count", "digest", "value_bytes", "changes", "chunks"):
        assert getattr(restored, attr) == getattr(full, attr), attr
    assert restored.chunks == {CHUNK_PREFIX + "c/0": 3}  # the first slot it was applied in
    assert restored.held_bytes == 0
    assert list(restored.entries) == ENTRIES


def test_catch_up_reads_are_bounded_by_bytes_and_span_store_and_memory(tmp_path):
    storage = _stored(tmp_path)
    stored = storage.load(values=False).stored
    assert stored is not None
    log = AppliedLog((), stored)
    log.learn(7, Entry("c", b"gamma" * 100))
    applied = log.apply_learned()
    assert log.held_bytes == 500  # not yet stored
    # At least one entry, then only what fits.
    assert log.read(0, 10, 0) == ENTRIES[:1]
    assert log.read(0, 10, 765) == ENTRIES[:4]
    assert log.read(0, 10, 764) == ENTRIES[:3]
    assert log.read(5, 10, 1 << 20) == [*ENTRIES[5:], *applied]
    assert log.read(7, 10, 0) == applied
    storage.commit(Persist(log=applied))
    log.stored(8)
    assert log.held_bytes == 0
    assert log.read(6, 10, 1 << 20) == [ENTRIES[6], *applied]


def _bytes_read() -> int:
    """Bytes this process read through system calls so far (SQLite reads its file so)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def test_a_catch_up_batch_reads_only_the_values_it_sends(tmp_path):
    """The batch's sizes come from the rows' headers: asking a row for a column stored after
    its value (its position) made SQLite walk the value's overflow pages, so a batch of one
    value read every value of the rows it looked at (seconds on a leader's event loop)."""
    from paxmr.storage import LogReader  # noqa: PLC0415

    value = bytes(range(256)) * 4096  # 1 MiB
    storage = Storage.open(tmp_path / "log.db", bootstrap=True)
    storage.commit(Persist(log=[LogEntry(i, f"r{i}", value, i) for i in range(16)]))
    reader = LogReader(tmp_path / "log.db")  # a connection of its own: nothing cached yet
    before = _bytes_read()
    batch = reader.read(0, 16, len(value))
    read = _bytes_read() - before
    reader.close()
    assert [(e.slot, e.position, e.value) for e in batch] == [(0, 0, value)]
    assert read < 3 * len(value)  # one value and some pages, not sixteen values
