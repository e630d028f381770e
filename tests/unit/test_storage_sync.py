"""Summaries and applied entries alone are written without an fsync of their own; acceptor
state never is."""

from __future__ import annotations

import sqlite3

import pytest

from paxmr.paxos import Ballot, Entry, LogEntry, Persist
from paxmr.storage import Storage

FULL = 2  # PRAGMA synchronous: fsync the WAL at every commit


def _synchronous(storage: Storage) -> int:
    return int(storage._conn.execute("PRAGMA synchronous").fetchone()[0])


def test_a_commit_after_saving_summaries_is_fsynced_again(tmp_path):
    storage = Storage.open(tmp_path / "prm.db", bootstrap=True)
    assert _synchronous(storage) == FULL
    storage.commit(Persist(log=[LogEntry(0, "a", b"alpha", 0)]))
    storage.save_summaries([(0, '{"position": 0}')])
    assert _synchronous(storage) == FULL
    assert storage.summaries() == {0: '{"position": 0}'}


def test_a_failed_summary_write_leaves_commits_fsynced(tmp_path):
    storage = Storage.open(tmp_path / "prm.db", bootstrap=True)
    with pytest.raises(sqlite3.Error):
        storage.save_summaries([(0, None)])  # type: ignore[list-item]  # body is NOT NULL
    assert _synchronous(storage) == FULL


def test_summaries_ride_in_a_commits_transaction_and_alone_without_one(tmp_path):
    storage = Storage.open(tmp_path / "prm.db", bootstrap=True)
    storage.commit(Persist(log=[LogEntry(0, "a", b"alpha", 0)]))
    storage.commit(Persist(log=[LogEntry(1, "b", b"beta", 1)]), [(0, '{"position": 0}')])
    assert _synchronous(storage) == FULL
    assert storage.summaries() == {0: '{"position": 0}'}
    storage.commit(Persist(), [(1, '{"position": 1}')])  # nothing else to commit
    assert _synchronous(storage) == FULL
    assert storage.summaries() == {0: '{"position": 0}', 1: '{"position": 1}'}


def _commits(storage: Storage) -> list[str]:
    """The synchronous level of each transaction the storage commits from now on, in order
    ("FULL": its commit fsyncs the WAL), as SQLite was told it."""
    levels: list[str] = []
    level = ["FULL"]

    def trace(sql: str) -> None:
        if sql.upper().startswith("PRAGMA SYNCHRONOUS="):
            level[0] = sql.split("=", 1)[1].upper()
        elif sql.upper() == "COMMIT":
            levels.append(level[0])

    storage._conn.set_trace_callback(trace)
    return levels


ROW = (Ballot(1, 1), Entry("a", b"alpha"))


def test_acceptor_state_is_fsynced_and_a_commit_of_applied_entries_alone_is_not(tmp_path):
    storage = Storage.open(tmp_path / "prm.db", bootstrap=True)
    levels = _commits(storage)
    storage.commit(Persist(promised=Ballot(1, 1)))
    storage.commit(Persist(accepted={0: ROW}))
    storage.commit(Persist(log=[LogEntry(0, "a", b"alpha", 0)]))  # the decision alone
    storage.commit(Persist(accepted={1: ROW}, log=[LogEntry(1, "b", b"beta", 1)]))
    storage.commit(Persist(used_round=2))
    storage.commit(Persist(voting=True))
    storage.commit(Persist(recover_until=3))
    storage.commit(Persist(discard_from=5))
    storage.commit(Persist(unfenced=True))
    assert levels == ["FULL", "FULL", "NORMAL", "FULL", "FULL", "FULL", "FULL", "FULL", "FULL"]
    assert _synchronous(storage) == FULL
    assert storage.load().log[0].value == b"alpha"


def test_only_fsynced_commits_count_as_writes(tmp_path):
    """The stamps (storage.py) count writes a peer may rely on: a log write without an fsync
    is not one of them (a power loss may take it back)."""
    storage = Storage.open(tmp_path / "prm.db", bootstrap=True)
    writes = storage.stamp.writes
    storage.commit(Persist(log=[LogEntry(0, "a", b"alpha", 0)]))
    assert storage.stamp.writes == writes
    assert storage._counters()[1] == writes
    storage.commit(Persist(accepted={1: ROW}))
    assert storage.stamp.writes == storage._counters()[1] == writes + 1


def test_a_promise_makes_the_log_written_before_it_durable(tmp_path):
    """A Promise reports the applied length; the driver asks for durable_log before it sends
    one, which fsyncs what was written without (or costs nothing when nothing was)."""
    storage = Storage.open(tmp_path / "prm.db", bootstrap=True)
    levels = _commits(storage)
    storage.commit(Persist(), durable_log=True)  # nothing unsynced: no transaction
    storage.commit(Persist(log=[LogEntry(0, "a", b"alpha", 0)]))
    storage.commit(Persist(), durable_log=True)
    storage.commit(Persist(), durable_log=True)  # synced already
    storage.commit(Persist(log=[LogEntry(1, "b", b"beta", 1)]), durable_log=True)
    assert levels == ["NORMAL", "FULL", "FULL"]
