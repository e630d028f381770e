"""Commits the PRM runs on its event loop (Storage.commit without `checkpoint`): no checkpoint
of the WAL (a checkpoint fsyncs the database file) and no mark, with an fsync of their own or
not; the next commit that may (in a worker thread, once Storage.upkeep_due) does both."""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import TYPE_CHECKING

import pytest

from paxmr import storage as storage_module
from paxmr.paxos import Ballot, Entry, Persist
from paxmr.paxos.log import LogEntry
from paxmr.storage import (
    UNCHECKPOINTED_COMMITS,
    WAL_CHECKPOINT_PAGES,
    Storage,
    StorageBusy,
    mark_path,
)

if TYPE_CHECKING:
    from pathlib import Path

PAGE = 4096


def _db_pages(path: Path) -> int:
    return path.stat().st_size // PAGE


def test_a_commit_on_the_loop_neither_syncs_nor_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "prm.db"
    storage = Storage.open(path, bootstrap=True)
    try:
        applied = Persist(log=[LogEntry(0, "r0", b"x" * 100, 0)])
        assert not storage.syncs(applied)
        assert storage.syncs(Persist(promised=Ballot(1, 1)))
        before = _db_pages(path)
        # Enough applied entries to pass the WAL's checkpoint threshold several times over.
        value = b"v" * (2 * PAGE)
        slot = 0
        for slot in range(2 * WAL_CHECKPOINT_PAGES // 3):
            storage.commit(Persist(log=[LogEntry(slot, f"r{slot}", value, slot)]), checkpoint=False)
        assert _db_pages(path) == before  # nothing copied back: no checkpoint ran
        # A commit in a worker thread (checkpointing as ever) checkpoints the WAL.
        storage.commit(Persist(promised=Ballot(1, 1)))
        assert _db_pages(path) > before + WAL_CHECKPOINT_PAGES
        # And the connection checkpoints again by itself.
        grown = _db_pages(path)
        for s in range(slot + 1, slot + 1 + 2 * WAL_CHECKPOINT_PAGES // 3):
            storage.commit(Persist(log=[LogEntry(s, f"r{s}", value, s)]))
        assert _db_pages(path) > grown
    finally:
        storage.close()


def test_a_syncing_commit_on_the_loop_neither_checkpoints_nor_marks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower's accept, committed on its loop (prm.Prm._commit_here), is fsynced but leaves
    the WAL's checkpoint and the mark to the next commit that may do both."""
    path = tmp_path / "prm.db"
    storage = Storage.open(path, bootstrap=True)
    try:
        monkeypatch.setattr(storage_module, "MARK_INTERVAL", 0.0)  # a mark due at every commit
        mark = mark_path(path)
        marked = json.loads(mark.read_text())["writes"]
        before = _db_pages(path)
        value = b"v" * (2 * PAGE)
        for slot in range(2 * WAL_CHECKPOINT_PAGES // 3):
            accept = Persist(promised=Ballot(1, 1))
            accept.accepted[slot] = (Ballot(1, 1), Entry(f"r{slot}", value))
            assert storage.syncs(accept)
            storage.commit(accept, checkpoint=False)
        assert storage.stamp.writes > marked  # each one counted as a durable write
        assert _db_pages(path) == before  # no checkpoint ran
        assert json.loads(mark.read_text())["writes"] == marked  # nor a mark
        assert storage.upkeep_due()
        storage.commit(Persist(promised=Ballot(2, 1)))  # one in a worker does both
        assert _db_pages(path) > before + WAL_CHECKPOINT_PAGES
        assert json.loads(mark.read_text())["writes"] == storage.stamp.writes
    finally:
        storage.close()


def test_upkeep_is_due_after_enough_commits_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver hands a commit to a worker (which checkpoints and marks) once this many went
    without: the WAL stays bounded however long a follower commits on its loop."""
    # Only the count makes it due here: on a loaded machine these commits took over the
    # mark's interval, which made it due by time inside the loop.
    monkeypatch.setattr(storage_module, "MARK_INTERVAL", 3600.0)
    storage = Storage.open(tmp_path / "prm.db", bootstrap=True)
    try:
        storage.commit(Persist(promised=Ballot(1, 1)))  # marks: the mark is not due for a while
        assert not storage.upkeep_due()
        for round_ in range(2, 2 + UNCHECKPOINTED_COMMITS):
            assert not storage.upkeep_due()
            storage.commit(Persist(promised=Ballot(round_, 1)), checkpoint=False)
        assert storage.upkeep_due()
        storage.commit(Persist(promised=Ballot(round_ + 1, 1)))
        assert not storage.upkeep_due()
    finally:
        storage.close()


def test_a_commit_that_may_not_wait_refuses_another_writers_lock_at_once(tmp_path: Path) -> None:
    """The PRM's event loop never waits for another writer (an operator's sqlite3 shell, the
    reclaim connection) for SQLite's busy timeout: such a commit raises StorageBusy having
    written nothing, and the driver hands it to a worker (Prm._carry_out). The other writer
    lets go only after the attempt came back, or after a few seconds: an attempt that waited
    for the lock would then commit instead of refusing."""
    path = tmp_path / "prm.db"
    storage = Storage.open(path, bootstrap=True)
    accept = Persist(promised=Ballot(1, 1))
    holding, attempted = threading.Event(), threading.Event()

    def other_writer() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        holding.set()
        attempted.wait(3.0)
        db.execute("ROLLBACK")
        db.close()

    writer = threading.Thread(target=other_writer)
    writer.start()
    try:
        holding.wait()
        with pytest.raises(StorageBusy):
            storage.commit(accept, checkpoint=False, wait=False)
        attempted.set()
        writer.join()
        assert storage.load().promised == Ballot(0, 0)  # nothing written
        storage.commit(accept, checkpoint=False, wait=False)  # the lock is free: committed
        assert storage.load().promised == Ballot(1, 1)
        busy_ms = storage._conn.execute("PRAGMA busy_timeout").fetchone()[0]
        assert busy_ms == storage_module.BUSY_MS  # other commits wait as before
    finally:
        attempted.set()
        writer.join()
        storage.close()
