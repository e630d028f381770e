"""A storage that went back in time does not vote with what it forgot (storage.py): an old copy
of prm.db put back, one copied without its -wal file, a voting one founded over a node that held
another. Each is made forgetful on open and says why; a storage that lost nothing is left alone."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

from paxmr.paxos import Ballot, Entry, LogEntry, Persist
from paxmr.stamps import SESSIONS_KEPT, Sightings, Stamp
from paxmr.storage import Identity, Storage, forget, mark_path

A = Entry("a", b"alpha")


def _write(storage: Storage, round_: int) -> None:
    storage.commit(Persist(promised=Ballot(round_, 2), accepted={round_: (Ballot(round_, 2), A)}))


def _copy(db: Path, to: Path) -> None:
    """A consistent raw copy of a live database (as a file copy of a quiet one would be)."""
    with (
        contextlib.closing(sqlite3.connect(db)) as src,
        contextlib.closing(sqlite3.connect(to)) as dst,
    ):
        src.backup(dst)


def _put_back(copy: Path, db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(copy, db)


def test_an_old_copy_put_back_is_made_forgetful(tmp_path: Path) -> None:
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True, identity=Identity("c", (1, 2, 3)))
    storage.commit(Persist(log=[LogEntry(0, "a", b"alpha", 0)]))
    _write(storage, 1)
    _copy(db, tmp_path / "old.db")
    _write(storage, 2)  # promised round 2 and accepted in it: the copy forgot both
    storage.close()
    _put_back(tmp_path / "old.db", db)

    reopened = Storage.open(db)
    assert reopened.demoted is not None
    # The log write alone is no counted write (Storage.commit): writes 1 and 2 are.
    assert "went back in time: it holds 1 writes, this node had made 2 durable" in reopened.demoted
    state = reopened.load()
    assert (state.voting, state.promised, state.accepted) == (False, Ballot(0, 0), {})
    assert [e.request_id for e in state.log] == ["a"]  # the chosen log stays
    assert reopened.identity() == Identity("c", (1, 2, 3))
    reopened.close()
    assert Storage.open(db).demoted is None  # told once: it is a new, forgetful storage now


def test_a_copy_without_its_wal_file_is_made_forgetful(tmp_path: Path) -> None:
    """Commits sit in the -wal file until a checkpoint: the database file alone is older."""
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True)
    _write(storage, 1)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # write 1 is in the database file now
    _write(storage, 2)  # and write 2 only in the -wal file
    storage.mark()  # as the commits of the last MARK_INTERVAL would
    shutil.copy(db, tmp_path / "main-file-only.db")
    storage.close()
    _put_back(tmp_path / "main-file-only.db", db)

    reopened = Storage.open(db)
    assert reopened.demoted is not None
    assert "went back in time" in reopened.demoted
    assert not reopened.load().voting


def test_a_voting_storage_founded_beside_another_ones_mark_is_made_forgetful(
    tmp_path: Path,
) -> None:
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True)
    _write(storage, 1)
    storage.close()
    db.unlink()
    refounded = Storage.open(db, bootstrap=True)
    assert refounded.demoted is not None
    assert "not the storage this node last wrote" in refounded.demoted
    assert not refounded.load().voting


def test_storage_that_lost_nothing_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True)
    for round_ in range(1, 5):
        _write(storage, round_)
    storage.close()
    reopened = Storage.open(db)
    assert reopened.demoted is None
    assert reopened.load().promised == Ballot(4, 2)
    reopened.close()
    # A lost disk (a new, non-voting storage beside the old mark) is already forgetful.
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)
    assert mark_path(db).exists()
    assert Storage.open(db).demoted is None


def test_an_unreadable_mark_makes_a_voting_storage_forgetful_instead_of_failing(
    tmp_path: Path,
) -> None:
    """A mark edited or damaged by hand proves nothing either way: a voting storage beside it
    fences, as one that lost its storage would, rather than the PRM failing to start."""
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True)
    _write(storage, 1)
    storage.close()
    for damaged in ("", "{", '{"nonce": 1}', "[]", '{"nonce": "x", "writes": 1}'):
        mark_path(db).write_text(damaged)
        reopened = Storage.open(db)
        assert reopened.demoted is not None
        assert "cannot be read" in reopened.demoted
        assert not reopened.load().voting
        reopened.close()
        whole = Storage.open(db)
        assert whole.demoted is None  # the mark is whole again
        whole.close()
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("UPDATE meta SET value = 1 WHERE key = 'voting'")  # votes again


def test_stamps_count_durable_writes_and_what_peers_saw_survives_a_restart(
    tmp_path: Path,
) -> None:
    """The stamps that show a whole-directory rollback to the peers (storage.py): a storage's
    write count rises with each commit, and the highest stamp seen from each peer goes to the
    database with the next commit, for the peer to be shown after a restart."""
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True, identity=Identity("c", (1, 2, 3)))
    start = storage.stamp
    _write(storage, 1)
    _write(storage, 2)
    assert storage.stamp == Stamp(start.nonce, start.writes + 2, start.session)
    storage.saw(2, Stamp(7, 10))
    storage.saw(2, Stamp(7, 4))  # an older frame: the highest stays
    storage.saw(3, Stamp(8, 5))
    storage.saw(3, Stamp(9, 1))  # node 3's storage replaced (a new nonce): it starts again
    assert storage.seen == {2: Stamp(7, 10), 3: Stamp(9, 1)}
    _write(storage, 3)
    storage.saw(2, Stamp(7, 11))  # after the last commit: not durable, lost with the process
    storage._conn.close()  # killed: no close()
    again = Storage.open(db)
    assert again.seen == {2: Stamp(7, 10), 3: Stamp(9, 1)}
    assert again.stamp.nonce == start.nonce  # a new session (stamps.went_back), same storage
    assert again.stamp.writes == start.writes + 3
    assert again.behind(2, Stamp(start.nonce, start.writes + 3)) is None
    assert again.behind(2, Stamp(start.nonce + 1, start.writes + 9)) is None  # another storage
    why = again.behind(2, Stamp(start.nonce, start.writes + 4))
    assert why is not None
    assert "node 2 saw it hold" in why


def test_a_storage_a_peer_saw_further_is_demoted_under_a_new_nonce(tmp_path: Path) -> None:
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True, identity=Identity("c", (1, 2, 3)))
    _write(storage, 1)
    storage.saw(2, Stamp(7, 10))
    old = storage.stamp
    storage.demote("a peer saw it further")
    assert storage.load().voting is False
    assert storage.load().accepted == {}
    assert storage.stamp.nonce != old.nonce
    assert storage.stamp.writes == 0
    assert storage.seen == {2: Stamp(7, 10)}  # what it saw of others is still true
    storage.close()
    assert Storage.open(db).demoted is None  # its mark agrees: nothing more to do


def test_a_nonce_a_peer_replaced_is_remembered_and_shown_as_went_back(tmp_path: Path) -> None:
    """A storage is never named again once its node replaced it (storage.py): the peers keep
    the replaced (retired) nonces, refuse a stamp of one, and tell a node running one that it
    went back (a VM snapshot from before a lost disk or a demotion), across restarts."""
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True, identity=Identity("c", (1, 2, 3)))
    storage.saw(2, Stamp(7, 10))
    storage.saw(2, Stamp(8, 1))  # node 2 demoted: 7 is retired
    storage.saw(2, Stamp(7, 12))  # a frame of the old storage (a snapshot): not noted
    assert storage.seen[2] == Stamp(8, 1)
    assert storage.replaced(2, 7)
    assert not storage.replaced(2, 8)
    assert not storage.replaced(3, 7)
    assert storage.retired_of(2) == (7,)
    _write(storage, 1)
    storage._conn.close()  # killed: no close()
    again = Storage.open(db)
    assert again.replaced(2, 7)
    assert again.retired_of(2) == (7,)
    # Node 2's view of this storage: its nonce retired, whatever stamp it shows.
    mine = again.stamp.nonce
    why = again.behind(2, Stamp(mine + 1, 0), (5, mine))
    assert why is not None
    assert "node 2 saw this node replace it" in why
    assert again.behind(2, None, (5, mine + 1)) is None


def test_what_a_peer_relays_of_another_node_is_noted_where_it_is_sure(tmp_path: Path) -> None:
    """Stamps relayed by another node (storage.heard): taken where this node knows nothing or
    the same storage with fewer writes; a stamp of another nonce is not (which is newer only a
    node that saw both can tell) unless the relay shows the known one replaced."""
    storage = Storage.open(tmp_path / "prm.db", bootstrap=True, identity=Identity("c", (1, 2, 3)))
    storage.heard(3, Stamp(7, 10), ())
    assert storage.seen[3] == Stamp(7, 10)  # knew nothing
    storage.heard(3, Stamp(7, 4), ())
    assert storage.seen[3] == Stamp(7, 10)  # an older stamp of the same storage
    storage.heard(3, Stamp(7, 12), ())
    assert storage.seen[3] == Stamp(7, 12)
    storage.heard(3, Stamp(8, 1), ())  # another storage, newer or older: not known here
    assert storage.seen[3] == Stamp(7, 12)
    assert not storage.replaced(3, 7)
    storage.heard(3, Stamp(8, 1), (7,))  # the relaying node saw node 3 replace 7 by 8
    assert storage.seen[3] == Stamp(8, 1)
    assert storage.replaced(3, 7)
    storage.heard(3, Stamp(7, 99), ())  # a stale relay of the replaced storage
    assert storage.seen[3] == Stamp(8, 1)
    _write(storage, 1)
    storage._conn.close()
    again = Storage.open(tmp_path / "prm.db")
    assert again.seen[3] == Stamp(8, 1)
    assert again.replaced(3, 7)


def test_each_open_is_a_session_and_the_sessions_seen_survive_a_restart(tmp_path: Path) -> None:
    """stamps.went_back: each open of the storage starts a session at its write count, kept
    durably (the latest SESSIONS_KEPT); the session of each stamp seen of a peer is kept with
    it; a demotion starts over. A database of a paxmr before sessions opens with its seen
    stamps sessionless (compared by their counts)."""
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True, identity=Identity("c", (1, 2, 3)))
    _write(storage, 1)
    storage.saw(2, Stamp(7, 10, 3))
    _write(storage, 2)
    first = storage.sessions
    storage.close()
    again = Storage.open(db)
    assert again.sessions[:-1] == first
    assert again.sessions[-1] == (again.stamp.session, 2)
    assert again.seen == {2: Stamp(7, 10, 3)}
    assert again.behind(2, Stamp(again.stamp.nonce, 2, first[-1][0])) is None
    assert again.behind(2, Stamp(again.stamp.nonce, 3, first[-1][0])) is not None
    again.close()
    for _ in range(SESSIONS_KEPT + 3):
        Storage.open(db).close()
    latest = Storage.open(db)
    assert len(latest.sessions) == SESSIONS_KEPT
    latest.demote("a peer saw it further")
    assert latest.sessions == ((latest.stamp.session, 0),)
    latest.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:  # as a paxmr before sessions left it
        conn.execute("DROP TABLE sessions")
        conn.execute("DROP TABLE seen_session")
    old = Storage.open(db)
    assert old.seen == {2: Stamp(7, 10)}
    assert len(old.sessions) == 1


def test_a_revert_after_a_downgrade_and_an_upgrade_is_caught(tmp_path: Path) -> None:
    """A paxmr before sessions that demotes a storage names a new nonce but leaves the old
    one's session rows (it knows no sessions table). After the upgrade they stood first in
    the new storage's sessions: where the old storage had started more than SESSIONS_KEPT
    times, the oldest of them opened at more writes than the new storage holds, and a
    snapshot reverted that does not record a run a peer saw at fewer writes than that passed
    (stamps.went_back: the oldest recorded session's start)."""
    db = tmp_path / "prm.db"
    Storage.open(db, bootstrap=True, identity=Identity("c", (1, 2, 3)), node=2).close()
    for k in range(SESSIONS_KEPT + 1):  # the old nonce's runs, 5 writes each
        old = Storage.open(db, node=2)
        for n in range(5):
            _write(old, 5 * k + n + 1)
        old.close()
    assert old.sessions[0][1] == 5
    # The demotion as a paxmr before sessions made it: storage.forget (unchanged since), its
    # _new_nonce (a new name at 0 writes, the sessions table untouched) and its mark; then it
    # wrote once, without sessions.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        forget(conn)
        conn.execute("INSERT INTO meta VALUES ('nonce', 12345)")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('writes', 1)")
        conn.commit()
    mark_path(db).write_text('{"nonce": 12345, "writes": 1}')
    # The upgrade: a run to 2 writes, a snapshot of the directory (database and mark), a run
    # the snapshot does not record, in which a peer sees 4 writes.
    new = Storage.open(db, node=2)
    assert new.demoted is None
    _write(new, 1000)
    new.close()
    snapshot = tmp_path / "snapshot.db"
    _copy(db, snapshot)
    marked = mark_path(db).read_text()
    new = Storage.open(db, node=2)
    _write(new, 1001)
    _write(new, 1002)
    seen = new.stamp
    assert seen.writes == 4
    new.close()
    _put_back(snapshot, db)
    mark_path(db).write_text(marked)
    reverted = Storage.open(db, node=2)
    assert reverted.demoted is None  # its mark agrees with it: only the peer can tell
    assert reverted.stamp.writes == 2
    why = reverted.behind(1, seen)
    assert why is not None
    assert "in a run of it that it does not record" in why
    peer = Sightings()
    peer.saw(2, seen)
    assert peer.refusal(2, reverted.stamp, reverted.sessions) is not None
