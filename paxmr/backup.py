"""Backup and restore of a replica's storage (prm.db), safe to restore however it is restored.

A backup is a consistent copy taken online with SQLite's backup API: one read transaction (WAL
lets the PRM keep committing meanwhile), so the copy is the database as it was at one commit.

Restoring an old copy as it was would be unsafe: the node would vote with promises and accepts it
has since forgotten (a promise it made after the backup could be broken, and agreement with it).
So a backup is made *forgetful* before anyone can restore it: its acceptor state (promised
ballot, used round, accepted values, recovery mark) is deleted and it is marked not voting
(``meta.voting = 0``). What it keeps is the chosen log (chosen values never change, so a prefix
of the chosen log is always true) and the cluster's identity. That is exactly the state of a
replica that lost its storage (``Storage.open`` without bootstrap) plus a head start on the log:
the node starts non-voting, catches up from its peers, and votes again only after the core's
lost-storage fence (paxmr/paxos/acceptor.py). Even a plain ``cp`` of a backup onto prm.db is
therefore safe; ``paxmr restore`` adds the checks (PRM not running, no storage in place, every
member of the backup's cluster has an address) and applies the same forgetting again, to a raw
copy of a live prm.db too.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from paxmr.paxos import GENESIS_DIGEST, MEMBERSHIP_PREFIX, LogEntry
from paxmr.paxos.membership import Membership, replay
from paxmr.storage import forget

_CHUNK = 1 << 20


class BackupError(Exception):
    """Not a paxmr storage, or a restore that would not be safe here."""


def describe(conn: sqlite3.Connection) -> dict[str, Any]:
    """What a storage holds: entries, slots, log digest, cluster, and whether it may vote."""
    try:
        entries, slots = conn.execute(
            "SELECT COUNT(position), COALESCE(MAX(slot) + 1, 0) FROM log"
        ).fetchone()
        row = conn.execute("SELECT digest FROM log ORDER BY slot DESC LIMIT 1").fetchone()
        voting = conn.execute("SELECT value FROM meta WHERE key = 'voting'").fetchone()
        ident = conn.execute("SELECT cluster_id, members FROM identity").fetchone()
        promised = conn.execute(
            "SELECT COUNT(*) FROM meta WHERE key NOT IN ('voting', 'nonce', 'writes')"
        ).fetchone()
        accepted = conn.execute("SELECT COUNT(*) FROM accepted").fetchone()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"not a paxmr storage: {exc}") from exc
    return {
        "entries": entries,
        "slots": slots,
        "digest": (bytes(row[0]) if row else GENESIS_DIGEST).hex(),
        "voting": bool(voting and voting[0]),
        "acceptor_state": bool(promised[0] or accepted[0]),
        "cluster_id": ident[0] if ident else None,
        # A founder's storage names the founding members; one that joined names none.
        "members": [int(m) for m in ident[1].split(",")] if ident and ident[1] else None,
    }


def _fsync_dir(dir_fd: int) -> None:
    os.fsync(dir_fd)


def take(db: Path, scratch: Path, dir_fd: int, leaf: str) -> dict[str, Any]:
    """Copy the live database ``db`` into ``leaf`` of the directory ``dir_fd`` (atomically, by
    rename, fsynced), forgetful (see the module's text). ``scratch`` is a private directory on
    the database's side for the intermediate copy. Returns ``describe`` of the copy."""
    tmp = scratch / f".backup-{uuid.uuid4().hex}.db"
    part = f".{leaf}.{uuid.uuid4().hex[:8]}.part"
    try:
        src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)  # in one step: one read snapshot, while the PRM keeps committing
        finally:
            src.close()
        try:
            forget(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal
            info = describe(dst)
        finally:
            dst.close()
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640,
                     dir_fd=dir_fd)  # fmt: skip
        try:
            with tmp.open("rb") as source, os.fdopen(fd, "wb", closefd=False) as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(part, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        _fsync_dir(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part, dir_fd=dir_fd)
    info["bytes"] = os.stat(leaf, dir_fd=dir_fd).st_size
    return info


def _check_addresses(conn: sqlite3.Connection, info: dict[str, Any], configured: list[int]) -> None:
    """Refuse a founder's backup whose cluster (as its log leaves it, not as it was founded: the
    log decides who is a member) has a member with no address, neither among the `configured`
    nodes nor in the log: the PRM would not start with it (services/prm.member_addresses)."""
    rows = conn.execute(
        "SELECT slot, request_id, value FROM log WHERE substr(request_id, 1, ?) = ? ORDER BY slot",
        (len(MEMBERSHIP_PREFIX), MEMBERSHIP_PREFIX),
    ).fetchall()
    founding = Membership(0, frozenset(info["members"]))
    now = replay(founding, [LogEntry(slot, rid, bytes(value), None) for slot, rid, value in rows])
    if missing := sorted(now.members - set(configured) - set(now.addresses)):
        raise BackupError(
            f"node {missing[0]} is a member of cluster {info['cluster_id']} (epoch {now.epoch})"
            f" but has no address: not among the configured nodes {sorted(configured)}"
        )


def restore(backup: Path, db: Path, members: list[int]) -> dict[str, Any]:
    """Install ``backup`` as the storage ``db`` of a stopped PRM that has none, forgetful.

    Refuses when ``db`` exists (move it away first: that is a decision, not a default) and when
    a member of the backup's cluster has no address (``members``: the configured nodes)."""
    if db.exists():
        raise BackupError(
            f"{db} exists: a restore only fills a node without storage. Stop the PRM and move"
            f" {db} (and its -wal and -shm files) away first"
        )
    source = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    try:
        info = describe(source)
        if info["members"] is not None:
            _check_addresses(source, info, members)
        db.parent.mkdir(parents=True, exist_ok=True)
        part = db.with_name(f".{db.name}.restoring")
        part.unlink(missing_ok=True)
        dst = sqlite3.connect(part)
        try:
            source.backup(dst)
            forget(dst)
            dst.execute("PRAGMA journal_mode=WAL")
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            info = describe(dst)
        finally:
            dst.close()
    finally:
        source.close()
    owner = db.parent.stat()
    if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(part, owner.st_uid, owner.st_gid)  # root restores for the service's user
    with part.open("rb+") as f:
        os.fsync(f.fileno())
    for suffix in ("-wal", "-shm"):
        Path(f"{part}{suffix}").unlink(missing_ok=True)
    part.rename(db)
    dir_fd = os.open(db.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _fsync_dir(dir_fd)
    finally:
        os.close(dir_fd)
    return info
