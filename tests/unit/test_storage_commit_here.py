"""Commits the PRM runs on its event loop (Storage.commit without `checkpoint`): no fsync, and
no checkpoint of the WAL either (a checkpoint fsyncs); the next commit that may checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from paxmr.paxos import Ballot, Persist
from paxmr.paxos.log import LogEntry
from paxmr.storage import WAL_CHECKPOINT_PAGES, Storage

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
