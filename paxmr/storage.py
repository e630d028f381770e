"""Durable acceptor state and chosen log in SQLite (WAL, synchronous=FULL).

`commit` writes one Persist in one transaction; with synchronous=FULL it returns only after the
WAL is fsynced, so the driver may send the Ready's messages as soon as it returns.

A storage that goes back in time would vote with promises and accepts it has forgotten: an old
prm.db copied back over the live one, or one copied without its -wal file. So every commit
counts itself (meta `writes`, in the same transaction), and a small file beside the database,
the high-water mark (prm.mark: the storage's random `nonce` and a count of writes it had made
durable), is brought up to date at most once per MARK_INTERVAL while commits go on, and on open
and close. `open` compares: a database of the same nonce with fewer writes than the mark went
back in time, and a voting database of another nonce is not the storage this node last wrote
(a re-founded one). Either is then made forgetful (`forget`: a replica that lost its storage,
which fences before it votes again, see paxmr/paxos/acceptor.py) and says why (`demoted`).
What the mark cannot see: a restore of the mark with the database (a whole-directory copy, a
VM snapshot reverted) and a copy taken less than MARK_INTERVAL before the last commits.

Those the peers see. Every frame a node sends carries its storage's write count, and the hello
of each connection its nonce (services/transport.py), and only after the commit the message
depends on: a peer that received a promise or an accept holds a stamp at least as high as the
write that made it durable. Each node keeps the highest stamp it saw from every peer (`seen`,
written with its next commit) and shows it to that peer: when the node starts
(prm.compare_with_peers asks every peer before it builds the core) and in the hello of every
connection to it. A storage of the same nonce with fewer writes than a peer saw went back in
time: it is made forgetful (`demote`). A count alone is not enough: a storage reverted whose
node then writes alone (each campaign is a write) climbs back to the count a peer saw with
other writes. So each open of the storage is a new session (`sessions`, its latest
stamps.SESSIONS_KEPT kept with the count each opened at), a stamp names the session it was
made in, and a peer that saw a session end later than the storage records, or saw one it
does not record, shows it went back (stamps.went_back). A storage is never named again once
a node replaced it (a lost disk, a demotion), so each node also keeps the nonces it saw a peer
replace (`retired`) and shows them to it: a storage of a retired nonce is a snapshot from before
the replacement. A node that received a node's votes is often the only one that saw them (the
leader or candidate that asked), so each node also relays what it saw itself of the other
nodes to its peers with the messages it sends them (`heard`; transport.Relayed), and a node
starting asks every member its configuration or its log names: a node that went back is shown
it by any peer it reaches, not only by the one that counted its votes. What this cannot see
(README, "Members"): a rollback while every peer that knows of the forgotten writes is
unreachable when the node starts (it votes until one connects): writes whose receiver has
since sent nothing to the peers the node reaches, so made in the last moment before that
receiver went down, or peers that lost their record of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from paxmr import chunks, stamps
from paxmr.paxos import (
    CHUNK_PREFIX,
    GENESIS_DIGEST,
    MEMBERSHIP_PREFIX,
    Ballot,
    DurableState,
    Entry,
    LogEntry,
    StoredLog,
    chain_digest,
)
from paxmr.stamps import Sightings, Stamp

if TYPE_CHECKING:
    from collections.abc import Iterator

    from paxmr.paxos import Persist

# Seconds between high-water marks while commits go on: one small file write and two fsyncs
# (file, directory) a second at most, off the commit's own fsync.
MARK_INTERVAL = 1.0
WAL_CHECKPOINT_PAGES = 1000  # SQLite's default: the WAL is checkpointed past this many pages
# Commits without a checkpoint (commit's `checkpoint`) before upkeep_due asks for one that may:
# a small commit adds 4-8 pages to the WAL, so it stays under about twice the threshold.
UNCHECKPOINTED_COMMITS = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS identity (
    only INTEGER PRIMARY KEY CHECK (only = 0), cluster_id TEXT NOT NULL, members TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS accepted (
    slot INTEGER PRIMARY KEY, round INTEGER NOT NULL, node INTEGER NOT NULL,
    request_id TEXT NOT NULL, value BLOB NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS log (
    slot INTEGER PRIMARY KEY, request_id TEXT NOT NULL, value BLOB NOT NULL,
    position INTEGER UNIQUE, digest BLOB NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS log_request_id ON log (request_id);
CREATE TABLE IF NOT EXISTS summary (slot INTEGER PRIMARY KEY, body TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS seen (
    peer INTEGER PRIMARY KEY, nonce INTEGER NOT NULL, writes INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS retired (
    peer INTEGER NOT NULL, nonce INTEGER NOT NULL, PRIMARY KEY (peer, nonce)) STRICT;
CREATE TABLE IF NOT EXISTS sessions (session INTEGER NOT NULL, start INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS seen_session (
    peer INTEGER PRIMARY KEY, nonce INTEGER NOT NULL, writes INTEGER NOT NULL,
    session INTEGER NOT NULL) STRICT;
"""


@dataclass(frozen=True)
class Identity:
    """Which cluster a storage belongs to and, for a founding member's, who founded it (empty
    for a node that joined or lost its disk): a founder does not start with another member
    list (the file says where nodes are, not who votes)."""

    cluster_id: str
    members: tuple[int, ...]


def mark_path(db: Path) -> Path:
    """The high-water mark of the storage at `db` (see the module's text)."""
    return db.with_suffix(".mark")


def forget(conn: sqlite3.Connection) -> None:
    """Make the database at `conn` a non-voting replica's: drop the acceptor state (promises,
    rounds, accepted values, recovery mark) and the storage's nonce and write count; keep the
    chosen log and the identity. The state of a replica that lost its storage, plus a head
    start on the log (a prefix of the chosen log is always true)."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM meta WHERE key != 'voting'")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('voting', 0)")
        conn.execute("DELETE FROM accepted")


class StorageBusy(RuntimeError):
    """Another writer holds the database: a commit that may not wait for it (Storage.commit's
    `wait`) wrote nothing."""


# Milliseconds a commit waits for another writer's lock: sqlite3.connect's default timeout.
BUSY_MS = 5000


class StorageRefused(RuntimeError):
    """A database the PRM may not run on; the message tells the operator what to do."""


def hold(db: Path) -> int:
    """Make this process the only PRM on the storage at `db` while it lives, or refuse: a lock
    on `prm.lock` beside it (flock, which the kernel drops when the process ends, SIGKILL
    included), taken before anything is read or written. A second PRM on one node's storage (the
    service's and one started by hand, say) would empty the first one's spool, open a session
    of the storage under it (its peers would then take the first one's frames for an ended
    run's) and take over its control socket. Returns the lock's descriptor, to keep open."""
    fd = os.open(db.with_name("prm.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 20, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StorageRefused(
            f"another PRM (pid {holder}) runs on {db}: one node's storage takes one PRM."
            " Nothing was changed; that one goes on (paxmr status)."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _wal(conn: sqlite3.Connection, path: str | Path) -> None:
    """Put the database in WAL mode, or refuse it. Where WAL cannot run (a SQLite built
    without it, a VFS without shared memory, a temporary or in-memory database) SQLite keeps
    the mode it had and says so only in its answer; where another connection holds a
    database in another mode, or the shared memory cannot be made, it fails. In rollback mode
    `commit`'s durability is not the WAL's fsync, and every read of the workers and of the
    catch-up reader (heavy.py, LogReader) would block the driver's commits or be blocked."""
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.OperationalError as exc:
        answer = f"SQLite answered: {exc}"
    else:
        if mode == "wal":
            return
        answer = f"SQLite kept it in journal mode {mode!r}"
    raise StorageRefused(
        f"{path} cannot be put in WAL mode ({answer}), which the PRM's storage needs; nothing"
        " was written to it. Stop any other process that holds it open (a sqlite3 shell, a"
        " backup tool), keep the state directory on a local filesystem (ext4, xfs, btrfs,"
        " tmpfs; not NFS or SMB), then start again."
    )


class Storage(Sightings):
    def __init__(self, conn: sqlite3.Connection, path: str | Path) -> None:
        super().__init__()
        self._conn = conn
        self.path = path
        # Why open made this storage forgetful, if it did (the PRM logs it).
        self.demoted: str | None = None
        self._marked_at = -float("inf")
        self.stamp = Stamp(0, 0)  # this storage's, kept up to date by commit
        self.sessions: stamps.Sessions = ()  # its latest opens (stamps.went_back), as stored
        # Held by commit, demote and close: a PRM stopped while a commit runs in its worker
        # thread closes the storage after that commit, not in its middle (whose uncommitted
        # write count the mark would take, and the next start read as a rollback).
        self._writing = threading.Lock()
        self._seen_stored: dict[int, Stamp] = {}  # the stamps seen that the database holds
        self._side_conn: sqlite3.Connection | None = None  # see _side
        self._unsynced = False  # a log write since the last fsync of the WAL (commit)
        self._unchecked = 0  # commits made without `checkpoint` since the last one with it

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        bootstrap: bool = False,
        identity: Identity | None = None,
        node: int | None = None,
    ) -> Storage:
        """Open or create the database. A database created without `bootstrap` belongs to a
        replica whose storage was lost or that joins late: it starts non-voting (see
        paxmr/paxos/acceptor.py). Only the founding members of a new cluster bootstrap, and
        they record the cluster's `identity`. The PRM opens its storage as `node`: a voting
        storage another node wrote is made forgetful."""
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            _wal(conn, path)
        except StorageRefused:
            conn.close()
            raise
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            fresh = conn.execute("SELECT 1 FROM meta WHERE key = 'voting'").fetchone() is None
            if fresh:
                # Without bootstrap, its ballots are made new by the core (acceptor.py).
                conn.execute("INSERT INTO meta VALUES ('voting', ?)", (1 if bootstrap else 0,))
            if fresh and identity is not None:
                members = ",".join(map(str, identity.members))
                conn.execute(
                    "INSERT INTO identity VALUES (0, ?, ?)", (identity.cluster_id, members)
                )
            # A storage named before was marked beside its database (one of a paxmr older
            # than the mark has no name yet: nothing to compare).
            named = conn.execute("SELECT 1 FROM meta WHERE key = 'nonce'").fetchone() is not None
            owner = conn.execute("SELECT value FROM meta WHERE key = 'node'").fetchone()
            _new_nonce(conn)
            _new_session(conn)
        storage = cls(conn, path)
        storage._load_sessions()
        # The session each stamp was seen in, where seen_session holds that very stamp (a
        # paxmr before sessions, run on this database meanwhile, left others without one).
        storage.seen = {
            peer: Stamp(nonce, writes, session or 0)
            for peer, nonce, writes, session in conn.execute(
                "SELECT peer, seen.nonce, seen.writes, seen_session.session FROM seen"
                " LEFT JOIN seen_session USING (peer, nonce, writes)"
            )
        }
        storage._seen_stored = dict(storage.seen)
        for peer, nonce in conn.execute("SELECT peer, nonce FROM retired ORDER BY rowid"):
            storage.retired.setdefault(peer, []).append(nonce)
        voting = storage._counters()[2]
        if voting and node is not None and owner is not None and owner[0] != node:
            storage.demote(
                f"prm.db is node {owner[0]}'s storage, not node {node}'s: copied from another"
                " node, it would vote with that node's promises and accepts"
            )
        elif why := storage._check_mark(named=named):
            storage.demote(why)
        if node is not None:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('node', ?)", (node,))
        storage.mark()
        return storage

    def _load_sessions(self) -> None:
        rows = self._conn.execute("SELECT session, start FROM sessions ORDER BY rowid")
        self.sessions = tuple(rows.fetchall())

    def _counters(self) -> tuple[int, int, bool]:
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        return meta["nonce"], meta.get("writes", 0), bool(meta["voting"])

    def behind(self, peer: int, seen: Stamp | None, retired: Sequence[int] = ()) -> str | None:
        """Why this storage went back in time, if `peer` saw it further (stamps.behind)."""
        return stamps.behind(self.stamp, peer, seen, retired, self.sessions)

    def pristine(self) -> bool:
        """A founding storage that has written nothing yet (as `paxmr init --found` leaves it)."""
        return self.stamp.writes == 0 and self._counters()[2] and self.length() == 0

    def demote(self, why: str) -> None:
        """Make this storage forgetful (the state of a replica that lost its storage, plus the
        log it holds) under a new nonce, because of `why` (the PRM logs it)."""
        with self._writing:
            forget(self._conn)
            with self._conn as conn:
                conn.execute("BEGIN IMMEDIATE")
                _new_nonce(conn)
                _new_session(conn)
            self._load_sessions()
            self.demoted = why
            self.mark()

    def _check_mark(self, *, named: bool) -> str | None:
        """Why this database may not vote with what it holds, if the mark shows it went back
        in time or is not the storage this node last wrote, or is missing though the storage
        was `named` (so marked) before; it is then made forgetful."""
        path = mark_path(Path(self.path))
        try:
            mark = json.loads(path.read_text())
            marked = (int(mark["nonce"]), int(mark["writes"]))
        except FileNotFoundError:
            if named and self._counters()[2]:
                return (
                    f"{path} is missing beside a voting prm.db that had one: put on a new disk"
                    " without it (a file backup, a copy), nothing shows it is the latest"
                )
            return None
        except (ValueError, KeyError, TypeError):  # not written by mark(): edited or damaged
            marked = None
        nonce, writes, voting = self._counters()
        if marked is None and voting:
            why = f"{path} cannot be read, so nothing shows this storage is the latest"
        elif marked is None:
            return None  # forgetful already
        elif marked[0] == nonce and marked[1] > writes:
            why = (
                f"prm.db went back in time: it holds {writes} writes, this node had made"
                f" {marked[1]} durable (an old copy, or one without its -wal file)"
            )
        elif marked[0] != nonce and voting:
            why = (
                "prm.db is not the storage this node last wrote (another one's high-water mark"
                " is beside it): founded again over a node of a running cluster?"
            )
        else:
            return None
        return why

    def mark(self) -> None:
        """Bring the high-water mark up to date (atomically: a new file renamed over it)."""
        nonce, writes, _ = self._counters()
        self.stamp = Stamp(nonce, writes, self.sessions[-1][0])
        path = mark_path(Path(self.path))
        part = path.with_name(f".{path.name}.part")
        with part.open("w") as out:
            json.dump({"nonce": nonce, "writes": writes}, out)
            out.flush()
            os.fsync(out.fileno())
        part.replace(path)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._marked_at = time.monotonic()

    def take_over(self, survivor: Path) -> int:
        """Copy the applied log of `survivor` (another node's database) into this new one:
        how every member of a re-founded cluster starts (`paxmr refound`). Returns the number
        of log slots taken over."""
        source = sqlite3.connect(survivor)
        try:
            rows = source.execute(
                "SELECT slot, request_id, value, position, digest FROM log ORDER BY slot"
            ).fetchall()
        finally:
            source.close()
        with self._conn as conn:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT COUNT(*) FROM log").fetchone()[0]:
                raise ValueError("take_over needs a new database")
            conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def identity(self) -> Identity | None:
        """The cluster this storage belongs to; `members` is empty unless it founded it."""
        row = self._conn.execute("SELECT cluster_id, members FROM identity").fetchone()
        if row is None:
            return None
        return Identity(row[0], tuple(int(m) for m in row[1].split(",") if m))

    def adopt(self, cluster_id: str, founders: tuple[int, ...] = ()) -> None:
        """Record the cluster a storage that did not found it belongs to, and its founders if
        they are known (prm.learn_cluster)."""
        with self._conn as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR IGNORE INTO identity VALUES (0, ?, ?)",
                (cluster_id, ",".join(map(str, founders))),
            )

    def close(self) -> None:
        with self._writing:
            self.mark()
        if self._side_conn is not None:
            self._side_conn.close()
        self._conn.close()

    def load(self, *, values: bool = True) -> DurableState:
        """The durable state; without `values`, the applied log is a StoredLog (read without
        its values, which a LogReader reads back on demand): how the PRM starts."""
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        accepted = {
            slot: (Ballot(round_, node), Entry(rid, value))
            for slot, round_, node, rid, value in self._conn.execute(
                "SELECT slot, round, node, request_id, value FROM accepted"
            )
        }
        log, stored = [], None
        if values:
            log = [
                LogEntry(slot, rid, value, position)
                for slot, rid, value, position in self._conn.execute(
                    "SELECT slot, request_id, value, position FROM log ORDER BY slot"
                )
            ]
        else:
            stored = self._stored()
        return DurableState(
            promised=Ballot(meta.get("promised_round", 0), meta.get("promised_node", 0)),
            used_round=meta.get("used_round", 0),
            accepted=accepted,
            log=log,
            voting=bool(meta["voting"]),
            recover_until=meta.get("recover_until"),
            stored=stored,
        )

    def _stored(self) -> StoredLog:
        """The applied log without its values: what AppliedLog keeps in memory. (length() of a
        BLOB reads no value: SQLite keeps the size in the row header.)"""
        conn = self._conn
        stored = StoredLog(LogReader(self.path), self.length(), self.digest())
        stored.requests = conn.execute(
            "SELECT request_id, position, slot FROM log WHERE position IS NOT NULL"
            " ORDER BY position"
        ).fetchall()
        stored.value_bytes = conn.execute(
            "SELECT COALESCE(SUM(length(value)), 0) FROM log"
        ).fetchone()[0]
        where = "FROM log WHERE substr(request_id, 1, ?) = ?"
        stored.changes = self.changes()
        chunk = (len(CHUNK_PREFIX), CHUNK_PREFIX)
        stored.chunks = conn.execute(
            f"SELECT request_id, MIN(slot) {where} GROUP BY request_id", chunk
        ).fetchall()
        return stored

    def changes(self) -> list[LogEntry]:
        """The applied membership changes, values included (few and small)."""
        return [
            LogEntry(slot, rid, value, None)
            for slot, rid, value in self._conn.execute(
                "SELECT slot, request_id, value FROM log WHERE substr(request_id, 1, ?) = ?"
                " ORDER BY slot",
                (len(MEMBERSHIP_PREFIX), MEMBERSHIP_PREFIX),
            )
        ]

    def save_summaries(self, rows: list[tuple[int, str]]) -> None:
        """Store the summaries (JSON, by slot) of applied positions, so that a restart shows
        the log without decoding it (paxmr/catalog.py). Not part of the acceptor's state: a
        missing one is computed again. So they are written without an fsync of their own: the
        next commit's fsync of the WAL covers them, and a power loss before it loses only
        summaries (synchronous=NORMAL; SIGKILL loses nothing written)."""
        conn = self._conn
        with self._synchronous(full=False), conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO summary VALUES (?, ?)", rows)

    def reclaim_chunks(self, below: int, named_before: int) -> int:
        """Empty the chunks in slots below `below` that no whole manifest in a slot below
        `named_before` names (paxmr/chunks.py says why this is safe); the value bytes freed.
        Chunks already empty are left as they are, so running it again changes nothing."""
        conn = self._side()
        gone = self._loose(below, named_before)
        if not gone:
            return 0
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE log SET value = x'' WHERE slot = ?", [(s,) for s, _ in gone])
        return sum(size for _, size in gone)

    def loose_chunks(self) -> bool:
        """Whether a chunk holds its value while no whole manifest names it (chunks.kept)."""
        end = self.length()
        return bool(self._loose(end, end))

    def _side(self) -> sqlite3.Connection:
        """A connection of its own for reclaiming chunks, used beside the driver's commits
        (SQLite serializes the two writers)."""
        if self._side_conn is None:
            self._side_conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            self._side_conn.execute("PRAGMA synchronous=FULL")
        return self._side_conn

    def _loose(self, below: int, named_before: int) -> list[tuple[int, int]]:
        """(slot, bytes) of the chunks below `below` that hold their value and that no
        manifest below `named_before` names."""
        conn = self._side()
        rows = conn.execute(
            "SELECT slot, request_id, length(value) FROM log"
            " WHERE substr(request_id, 1, ?) = ? AND slot < ? ORDER BY slot",
            (len(CHUNK_PREFIX), CHUNK_PREFIX, max(below, named_before)),
        ).fetchall()
        loose = [(slot, rid, size) for slot, rid, size in rows if slot < below and size > 0]
        if not loose:
            return []
        first: dict[str, tuple[int, bool]] = {}
        for slot, rid, size in rows:
            first.setdefault(rid, (slot, size > 0))
        manifests = conn.execute(
            "SELECT slot, value FROM log"
            " WHERE position IS NOT NULL AND slot < ? AND length(value) <= ?",
            (named_before, chunks.MAX_MANIFEST),
        )
        keep = chunks.kept(((slot, bytes(value)) for slot, value in manifests), first)
        return [(slot, size) for slot, rid, size in loose if rid not in keep]

    def summaries(self) -> dict[int, str]:
        return dict(self._conn.execute("SELECT slot, body FROM summary").fetchall())

    def commit(
        self,
        persist: Persist,
        summaries: list[tuple[int, str]] | None = None,
        *,
        durable_log: bool = False,
        checkpoint: bool = True,
        wait: bool = True,
    ) -> None:
        """Make one Ready's persist durable in one transaction, with `summaries` (as
        save_summaries stores them) in the same one: they cost no transaction of their own.
        Without a persist, the summaries alone are saved (save_summaries).

        A persist that changes no acceptor state (only applied entries: the leader's decision, a
        follower's apply of the chosen length an Accept announced) is written without an fsync
        of its own (synchronous=NORMAL) and counts no write (the module's text: a peer may hold
        its stamp as durable; the stamps seen of the peers ride with it as with any commit, kept
        by a SIGKILL). Why that is safe: an applied entry is a chosen value, which a quorum
        holds durably as accepted rows; here its row is deleted in the same transaction. The WAL
        is a sequence: a power loss keeps a prefix of the transactions, every FULL one included
        (its fsync covers the frames before it), so it can take back only such trailing log
        writes, never acceptor state, and what it takes back reappears as the accepted rows they
        replaced: the node applies them again, or catches up. SIGKILL loses nothing written. The
        core itself already sends what it applied before any commit (the chosen length in its
        Accepts, catch-up entries): facts about the log, true whether or not this node keeps
        them; an Accepted's or a Nack's length only guides catch-up. The one exception is a
        Promise: a new leader takes every slot below a promise's applied length as chosen and
        fetches it rather than proposing it (paxos/leader.py), so the driver asks for
        `durable_log` before it sends one: the log, as far as written, is then fsynced with this
        commit (a commit of nothing but the write count if need be).

        Without `checkpoint`, a commit neither checkpoints the WAL (that copies pages back and
        fsyncs the database file) nor brings the mark up to date (a file written and fsynced
        twice): the driver runs small commits on its event loop (prm.Prm._commit_here), and
        hands one to a worker thread, which does both, once upkeep_due says so.

        Without `wait`, a commit that finds another writer holding the database (an operator's
        sqlite3 shell, the reclaim connection) raises StorageBusy at once, having written
        nothing, instead of waiting for it (BUSY_MS): the driver's event loop must not wait
        there (prm.Prm._carry_out hands such a commit to a worker thread)."""
        with self._writing:
            self._commit(
                persist, summaries, durable_log=durable_log, checkpoint=checkpoint, wait=wait
            )
            self._unchecked = 0 if checkpoint else self._unchecked + 1

    def upkeep_due(self) -> bool:
        """Whether the next commit should be one with `checkpoint` (see commit): the mark is
        due, or UNCHECKPOINTED_COMMITS went without a checkpoint."""
        return (
            self._unchecked >= UNCHECKPOINTED_COMMITS
            or time.monotonic() - self._marked_at >= MARK_INTERVAL
        )

    def syncs(self, persist: Persist, *, durable_log: bool = False) -> bool:
        """Whether committing `persist` fsyncs (see commit)."""
        return persist.needs_fsync(durable_log=durable_log, unsynced=self._unsynced)

    def _commit(
        self,
        persist: Persist,
        summaries: list[tuple[int, str]] | None,
        *,
        durable_log: bool,
        checkpoint: bool,
        wait: bool = True,
    ) -> None:
        full = self.syncs(persist, durable_log=durable_log)
        if not full and not persist:  # nothing to write
            if summaries:
                self.save_summaries(summaries)
            return
        conn = self._conn
        meta = _meta(persist)
        retired = self._retired_new[:]
        with self._synchronous(full, checkpoint=checkpoint), conn:
            _begin(conn, wait=wait)
            if summaries:
                conn.executemany("INSERT OR REPLACE INTO summary VALUES (?, ?)", summaries)
            if full:  # the write count counts fsynced commits only
                conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'writes'")
            seen = self._store_seen(conn, retired)
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta)
            if persist.unfenced:
                conn.execute("DELETE FROM meta WHERE key = 'recover_until'")
            if persist.discard_from is not None:
                conn.execute("DELETE FROM accepted WHERE slot >= ?", (persist.discard_from,))
            conn.executemany(
                "INSERT OR REPLACE INTO accepted VALUES (?, ?, ?, ?, ?)",
                [
                    (slot, b.round, b.node, e.request_id, e.value)
                    for slot, (b, e) in persist.accepted.items()
                ],
            )
            if persist.log:
                self._append(conn, persist.log)
        self._seen_stored = seen
        del self._retired_new[: len(retired)]  # saw() only appends meanwhile
        self._unsynced = not full
        if not full:
            return
        # After the transaction: a frame sent from now on may say this write is durable.
        self.stamp = replace(self.stamp, writes=self.stamp.writes + 1)
        if checkpoint and time.monotonic() - self._marked_at >= MARK_INTERVAL:
            self.mark()

    def _append(self, conn: sqlite3.Connection, log: list[LogEntry]) -> None:
        """Add applied entries to the log, each with the chain digest after it, and drop
        their accepted rows, in the caller's transaction."""
        length = self.length()
        if log[0].slot != length:
            raise ValueError(f"log entries must start at slot {length}")
        digest = self.digest()
        rows = []
        for entry in log:
            digest = chain_digest(digest, entry)
            rows.append((entry.slot, entry.request_id, entry.value, entry.position, digest))
        conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute("DELETE FROM accepted WHERE slot < ?", (log[-1].slot + 1,))

    @contextlib.contextmanager
    def _synchronous(self, full: bool, *, checkpoint: bool = True) -> Iterator[None]:
        """Run a transaction with an fsync of the WAL at its commit (synchronous=FULL, what
        every commit of acceptor state needs) or without (NORMAL: see commit), and without one
        of the WAL's automatic checkpoints unless `checkpoint`; the connection is left at FULL,
        checkpointing, whatever happens."""
        if full and checkpoint:
            yield
            return
        if not full:
            self._conn.execute("PRAGMA synchronous=NORMAL")
        if not checkpoint:
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
        try:
            yield
        finally:
            if not full:
                self._conn.execute("PRAGMA synchronous=FULL")
            if not checkpoint:
                self._conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")

    def _store_seen(
        self, conn: sqlite3.Connection, retired: list[tuple[int, int]]
    ) -> dict[int, Stamp]:
        """Write the stamps seen from peers, if they changed, and the `retired` nonces in the
        caller's transaction; returns the stamps the database then holds."""
        seen = dict(self.seen)  # saw() runs on the event loop meanwhile
        if seen != self._seen_stored:
            conn.executemany(
                "INSERT OR REPLACE INTO seen VALUES (?, ?, ?)",
                [(peer, s.nonce, s.writes) for peer, s in seen.items()],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO seen_session VALUES (?, ?, ?, ?)",
                [(peer, s.nonce, s.writes, s.session) for peer, s in seen.items()],
            )
        conn.executemany("INSERT OR IGNORE INTO retired VALUES (?, ?)", retired)
        return seen

    def length(self) -> int:
        """Applied slots, no-ops included."""
        row = self._conn.execute("SELECT COALESCE(MAX(slot) + 1, 0) FROM log").fetchone()
        return int(row[0])

    def digest(self) -> bytes:
        """Running SHA-256 over the applied requests (paxmr.paxos.log.chain_digest)."""
        row = self._conn.execute("SELECT digest FROM log ORDER BY slot DESC LIMIT 1").fetchone()
        return bytes(row[0]) if row is not None else GENESIS_DIGEST


def _begin(conn: sqlite3.Connection, *, wait: bool) -> None:
    """Begin a write transaction; without `wait`, raise StorageBusy at once if another writer
    holds the database (the connection's busy timeout set to nothing for this one BEGIN)."""
    if wait:
        conn.execute("BEGIN IMMEDIATE")
        return
    conn.execute("PRAGMA busy_timeout=0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
            raise StorageBusy("another writer holds the database") from exc
        raise
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")


def _new_nonce(conn: sqlite3.Connection) -> None:
    """Name the storage (if it has no name yet: a new or a forgotten one), with no writes and
    no sessions."""
    if conn.execute("SELECT 1 FROM meta WHERE key = 'nonce'").fetchone() is None:
        conn.execute("INSERT INTO meta VALUES ('nonce', ?)", (secrets.randbits(62),))
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('writes', 0)")
        conn.execute("DELETE FROM sessions")


def _new_session(conn: sqlite3.Connection) -> None:
    """Open a new session of the storage at its write count (stamps.went_back), keeping the
    latest SESSIONS_KEPT. In open's transaction, fsynced before any stamp of it is sent.
    A session that opened at more writes than the storage holds is another storage's: a paxmr
    before sessions that named a new one (a demotion) left the old one's rows. Kept, the
    oldest of them could open above a write count a peer saw in a run that a reverted
    snapshot does not record, and hide the revert (went_back needs every recorded session to
    have opened at or below the storage's count). Those that opened lower only make it
    stricter, and being older than every run of this storage they are trimmed first."""
    (writes,) = conn.execute("SELECT value FROM meta WHERE key = 'writes'").fetchone()
    conn.execute("DELETE FROM sessions WHERE start > ?", (writes,))
    conn.execute("INSERT INTO sessions VALUES (?, ?)", (1 + secrets.randbits(62), writes))
    conn.execute(
        "DELETE FROM sessions WHERE rowid NOT IN"
        " (SELECT rowid FROM sessions ORDER BY rowid DESC LIMIT ?)",
        (stamps.SESSIONS_KEPT,),
    )


def _meta(persist: Persist) -> list[tuple[str, int]]:
    """The meta rows a persist sets."""
    meta: list[tuple[str, int]] = []
    if persist.promised is not None:
        meta += [("promised_round", persist.promised.round)]
        meta += [("promised_node", persist.promised.node)]
    if persist.used_round is not None:
        meta.append(("used_round", persist.used_round))
    if persist.voting is not None:
        meta.append(("voting", int(persist.voting)))
    if persist.recover_until is not None:
        meta.append(("recover_until", persist.recover_until))
    return meta


class LogReader:
    """Reads applied entries back (paxos.LogStore) on a connection of its own: the writer's
    may be inside a commit in another thread. Safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None  # opened on first use
        self._lock = threading.Lock()

    def read(self, start: int, max_slots: int, max_bytes: int) -> list[LogEntry]:
        found: list[LogEntry] = []
        with self._lock:
            if self._conn is None:
                self._conn = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False
                )
            conn = self._conn
            # One read transaction, ended here: a statement left open would hold its snapshot,
            # and every later read on this connection would miss newer slots.
            conn.execute("BEGIN")
            try:
                # Sizes first, values one at a time: a batch reads only what it sends. The
                # sizes come from the rows' headers (length() of a BLOB reads no value), but a
                # column after `value` (position, digest) is read by walking the value's
                # overflow pages: a catch-up batch asked for `position` here read every value
                # of its 256 rows (paxmr bench scale: seconds of the leader's loop).
                rows = conn.execute(
                    "SELECT slot, request_id, length(value) FROM log"
                    " WHERE slot >= ? ORDER BY slot LIMIT ?",
                    (start, max_slots),
                ).fetchall()
                for slot, rid, size in rows:
                    if found and size > max_bytes:
                        break
                    (value, position) = conn.execute(
                        "SELECT value, position FROM log WHERE slot = ?", (slot,)
                    ).fetchall()[0]
                    found.append(LogEntry(slot, rid, bytes(value), position))
                    max_bytes -= size
            finally:
                conn.execute("COMMIT")
        return found

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
