"""Summaries are written without an fsync of their own; acceptor state never is."""

from __future__ import annotations

import sqlite3

import pytest

from paxmr.paxos import LogEntry, Persist
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
