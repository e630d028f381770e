"""A PRM stopped (SIGTERM) while a commit runs in its worker thread: daemon.serve cancels the
drive task, but the executor thread goes on committing, and prm.main's finally closes the
storage meanwhile. Without Storage's lock, close's mark() read the commit's uncommitted
`writes` on the same connection, so the mark was ahead of the database and the next start
demoted a storage that lost nothing (found by a review, seen failing before the lock)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from paxmr.paxos import LogEntry, Persist, chain_digest
from paxmr.storage import Identity, Storage


def test_a_storage_closed_while_a_commit_runs_is_not_demoted_on_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "prm.db"
    Storage.open(db, bootstrap=True, identity=Identity("c", (1, 2, 3)), node=1).close()
    storage = Storage.open(db, node=1)
    storage.commit(Persist(log=[LogEntry(0, "a", b"alpha", 0)]))
    inside, release = threading.Event(), threading.Event()
    real = chain_digest

    def slow(digest: bytes, entry: LogEntry) -> bytes:  # a large value: the commit takes long
        inside.set()
        release.wait(5)
        return real(digest, entry)

    monkeypatch.setattr("paxmr.storage.chain_digest", slow)
    worker = threading.Thread(
        target=lambda: storage.commit(Persist(log=[LogEntry(1, "b", b"beta", 1)])), daemon=True
    )
    worker.start()
    assert inside.wait(5)
    threading.Timer(0.2, release.set).start()  # the commit ends while close waits for it
    storage.close()  # prm.main's finally, after SIGTERM cancelled the drive task
    worker.join(5)
    monkeypatch.undo()
    again = Storage.open(db, node=1)
    try:
        assert again.demoted is None, f"a clean stop demoted the storage: {again.demoted}"
    finally:
        again.close()
