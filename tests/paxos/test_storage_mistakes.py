"""Operator mistakes against the storage (storage.py's high-water mark, backup.py's restore),
from an adversarial review: ways a prm.db that forgot promises or accepts could still vote, and
a restore refused for no reason."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from paxmr import backup
from paxmr.paxos import Ballot, Entry, LogEntry, Persist
from paxmr.paxos.membership import Membership, change_request_id
from paxmr.storage import Identity, Storage, mark_path

A = Entry("a", b"alpha")


def _write(storage: Storage, round_: int) -> None:
    storage.commit(Persist(promised=Ballot(round_, 2), accepted={round_: (Ballot(round_, 2), A)}))


@pytest.mark.parametrize("how", ["old file backup", "live copy without its -wal"])
def test_a_voting_prm_db_put_on_a_new_disk_without_its_mark_is_made_forgetful(
    tmp_path: Path, how: str
) -> None:
    """The node's disk is replaced; the operator puts back its prm.db alone (a nightly file
    backup, or a copy of the live file made without its -wal), as issue 9 lists. The new disk
    has no high-water mark, so nothing compares: yet a storage that has been marked once (it
    has a nonce) and votes must have had a mark beside it. It should fence, as one whose mark
    is damaged does."""
    db = tmp_path / "old-disk" / "prm.db"
    db.parent.mkdir()
    storage = Storage.open(db, bootstrap=True, identity=Identity("c", (1, 2, 3)))
    _write(storage, 1)
    copy = tmp_path / "copy.db"
    if how == "old file backup":
        with (
            contextlib.closing(sqlite3.connect(db)) as src,
            contextlib.closing(sqlite3.connect(copy)) as dst,
        ):
            src.backup(dst)
        _write(storage, 2)  # promised round 2 and accepted in it: the backup forgot both
    else:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # write 1 is in the main file
        _write(storage, 2)  # write 2 only in the -wal file
        shutil.copy(db, copy)
    storage.close()

    with contextlib.closing(sqlite3.connect(copy)) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    assert (meta["promised_round"], meta["voting"]) == (1, 1)  # round 2's promise forgotten

    new = tmp_path / "new-disk" / "prm.db"
    new.parent.mkdir()
    shutil.copy(copy, new)
    assert not mark_path(new).exists()
    reopened = Storage.open(new)
    assert reopened.demoted is not None
    assert not reopened.load().voting


def _founded_then_grown(db: Path) -> None:
    """A founder's storage of cluster c ({1, 2, 3}) whose log then added node 4 (`member add`)."""
    storage = Storage.open(db, bootstrap=True, identity=Identity("c", (1, 2, 3)))
    value = Membership(0, frozenset({1, 2, 3})).change([1, 2, 3], [4], {4: "127.0.0.1:7404"})
    storage.commit(Persist(log=[LogEntry(0, change_request_id("add-4"), value, None)]))
    storage.close()


def test_a_backup_restores_on_a_cluster_that_grew_since_it_was_founded(tmp_path: Path) -> None:
    """Node 4 was added through the log and the configuration (as the inventory renders it) now
    lists nodes 1-4. A founder's backup restored on a member must not be refused for naming the
    founding members only: the log decides who is a member, as when the PRM starts."""
    _founded_then_grown(tmp_path / "live.db")
    info = backup.restore(tmp_path / "live.db", tmp_path / "n2" / "prm.db", [1, 2, 3, 4])
    assert (info["voting"], info["entries"], info["slots"]) == (False, 0, 1)


def test_a_backup_whose_members_this_configuration_cannot_reach_is_refused(
    tmp_path: Path,
) -> None:
    """The check restore keeps: a member of the backup's cluster (after its log) with no
    address, neither configured nor in the log, would keep the PRM from starting."""
    _founded_then_grown(tmp_path / "live.db")
    with pytest.raises(backup.BackupError, match=r"node 3 is a member .* but has no address"):
        backup.restore(tmp_path / "live.db", tmp_path / "n2" / "prm.db", [1, 2, 4])
    assert not (tmp_path / "n2" / "prm.db").exists()
