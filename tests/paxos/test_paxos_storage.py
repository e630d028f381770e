"""SQLite storage: what is committed is what loads, and it means what the in-memory disk means."""

from __future__ import annotations

import sqlite3

import pytest

from paxmr.paxos import Ballot, DurableState, Entry, LogEntry, Persist
from paxmr.paxos.log import AppliedLog
from paxmr.sim.disk import MemoryStorage
from paxmr.storage import Storage, StorageRefused

A, B = Entry("a", b"alpha"), Entry("b", b"beta")


def persists() -> list[Persist]:
    return [
        Persist(promised=Ballot(1, 2), used_round=1),
        Persist(accepted={0: (Ballot(1, 2), A), 1: (Ballot(1, 2), B), 2: (Ballot(1, 2), A)}),
        Persist(
            promised=Ballot(3, 1),
            log=[LogEntry(0, "a", b"alpha", 0), LogEntry(1, "", b"", None)],
        ),
        Persist(log=[LogEntry(2, "a", b"alpha", None), LogEntry(3, "b", b"beta", 1)]),
        Persist(voting=False, recover_until=9),
    ]


def test_commit_then_load_matches_the_in_memory_disk(tmp_path):
    storage = Storage.open(tmp_path / "log.db", bootstrap=True)
    memory = MemoryStorage()
    for persist in persists():
        storage.commit(persist)
        memory.commit(persist)
        assert storage.load() == memory.load()
    storage.close()
    reopened = Storage.open(tmp_path / "log.db")
    state = reopened.load()
    assert state == memory.load()
    assert state.accepted == {}  # slots 0..3 are applied: their accepted rows are gone
    assert (state.promised, state.used_round, state.voting, state.recover_until) == (
        Ballot(3, 1),
        1,
        False,
        9,
    )


def test_length_and_digest(tmp_path):
    storage = Storage.open(tmp_path / "log.db", bootstrap=True)
    for persist in persists():
        storage.commit(persist)
    assert storage.length() == 4
    assert storage.digest() == AppliedLog(storage.load().log).digest


def test_a_new_database_votes_only_when_bootstrapping(tmp_path):
    assert Storage.open(tmp_path / "a.db", bootstrap=True).load().voting
    assert not Storage.open(tmp_path / "b.db").load().voting
    # An existing database keeps what it stored, whatever the flag says now.
    assert Storage.open(tmp_path / "a.db").load().voting


def test_the_log_must_grow_contiguously(tmp_path):
    storage = Storage.open(tmp_path / "log.db", bootstrap=True)
    with pytest.raises(ValueError, match="slot 0"):
        storage.commit(Persist(log=[LogEntry(1, "a", b"", 0)]))
    with pytest.raises(ValueError, match="contiguously"):
        MemoryStorage().commit(Persist(log=[LogEntry(1, "a", b"", 0)]))


def test_a_failed_commit_leaves_nothing_behind(tmp_path):
    storage = Storage.open(tmp_path / "log.db", bootstrap=True)
    storage.commit(Persist(log=[LogEntry(0, "a", b"", 0)]))
    with pytest.raises(sqlite3.IntegrityError):
        # position 0 is taken: the whole transaction, promise included, rolls back
        storage.commit(Persist(promised=Ballot(5, 5), log=[LogEntry(1, "b", b"", 0)]))
    assert storage.load().promised == Ballot(0, 0)
    assert storage.length() == 1


def test_wal_and_full_sync_are_on(tmp_path):
    storage = Storage.open(tmp_path / "log.db", bootstrap=True)
    conn = storage._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@pytest.mark.parametrize(("path", "mode"), [(":memory:", "memory"), ("", "delete")])
def test_a_database_sqlite_keeps_out_of_wal_is_refused(path, mode):
    """Where WAL cannot run, SQLite answers the mode it kept (here really: an in-memory and a
    temporary database; a VFS without shared memory takes the same branch) and raises
    nothing: open refuses, naming the file, the mode and what to do."""
    with pytest.raises(StorageRefused) as refused:
        Storage.open(path, bootstrap=True)
    message = str(refused.value)
    assert message.startswith(f"{path} cannot be put in WAL mode")
    assert f"SQLite kept it in journal mode {mode!r}" in message
    assert "local filesystem" in message


def test_an_empty_database_loads_a_fresh_state(tmp_path):
    assert Storage.open(tmp_path / "log.db", bootstrap=True).load() == DurableState()
