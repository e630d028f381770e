"""In-memory storage with the same commit semantics as paxmr.storage.Storage."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from paxmr import stamps
from paxmr.paxos import DurableState, reports_applied_length
from paxmr.stamps import SESSIONS_KEPT, Sessions, Sightings, Stamp

if TYPE_CHECKING:
    import random
    from collections.abc import Sequence

    from paxmr.paxos import Persist, Ready

# A new storage's nonce and an open's session: only equality matters (paxmr/stamps.py), so a
# count will do (a session's from 1: 0 is none).
_nonces = itertools.count(1)
_sessions = itertools.count(1)
_writes = itertools.count(1)


@dataclass(frozen=True, eq=False)
class Write:
    """A durable write of a storage, after the one before it: what the storage went through,
    as the stamps cannot know it (the simulator checks with it that no node hears a storage
    that went back from what it heard of it, explore.Explorer._check_heard)."""

    number: int  # in the order writes were made, across storages
    before: Write | None


def made(last: Write | None, other: Write | None) -> bool:
    """Whether a storage whose latest durable write is `last` made `other` (None: nothing)."""
    if other is None:
        return True
    while last is not None and last.number > other.number:
        last = last.before
    return last is other


class MemoryStorage:
    """What a node's disk holds. Only `commit` changes it, so whatever a crash discards is
    exactly what the driver had not committed yet. Like prm.db it counts its fsynced commits
    under its nonce (`stamp`) and its opens (`sessions`, each made durable as its node starts:
    `open`), keeps what its node saw of its peers as of its last commit, and
    fsyncs only the commits that need it (Persist.needs_fsync): a power cut takes back any
    number of the latest commits that were not fsynced (`power_cut`)."""

    def __init__(self, *, bootstrap: bool = True, state: DurableState | None = None) -> None:
        """An empty disk (voting if `bootstrap`), or one that holds `state` (a restored copy)."""
        self._state = state if state is not None else DurableState(voting=bootstrap)
        # A founding member's storage records the cluster's identity (`paxmr init --found`);
        # a node that lost its disk or joined has none.
        self.identity = bootstrap
        self.stamp = Stamp(next(_nonces), 0)
        self.sessions: Sessions = ()
        self.last: Write | None = None  # its latest durable write
        self.sightings = Sightings()
        # The disk before each commit since the last fsync: what a power cut may go back to.
        self._unsynced: list[tuple[DurableState, Sightings]] = []

    def open(self) -> None:
        """Its node starts on it: a new session at its write count (storage._new_session)."""
        session = next(_sessions)
        self.sessions = (*self.sessions[-SESSIONS_KEPT + 1 :], (session, self.stamp.writes))
        self.stamp = replace(self.stamp, session=session)

    def behind(self, peer: int, seen: Stamp | None, retired: Sequence[int] = ()) -> str | None:
        """Why it went back in time, if `peer` saw it further (storage.Storage.behind)."""
        return stamps.behind(self.stamp, peer, seen, retired, self.sessions)

    @property
    def voting(self) -> bool:
        return self._state.voting

    @property
    def length(self) -> int:
        """How many log entries it holds."""
        return len(self._state.log)

    def pristine(self) -> bool:
        """A founding storage that has written nothing (storage.Storage.pristine)."""
        return self.stamp.writes == 0 and self.voting and self.length == 0

    def load(self) -> DurableState:
        return replace(self._state, accepted=dict(self._state.accepted), log=list(self._state.log))

    def commit(
        self, persist: Persist, sightings: Sightings | None = None, *, durable_log: bool = False
    ) -> None:
        """As Storage.commit: a commit of applied entries alone is not fsynced and counts no
        write; one of nothing (no entries, no fsync needed) writes nothing."""
        full = persist.needs_fsync(durable_log=durable_log, unsynced=bool(self._unsynced))
        if not full and not persist:  # nothing to write
            return
        before = None if full else (self.load(), self.sightings.copy())
        persist.apply_to(self._state)
        if sightings is not None:
            self.sightings = sightings.copy()
        if before is not None:
            self._unsynced.append(before)
            return
        self._unsynced.clear()  # the fsync covers every commit before it
        self.stamp = replace(self.stamp, writes=self.stamp.writes + 1)
        self.last = Write(next(_writes), self.last)

    def write(self, syncing: tuple[Persist, Ready], sightings: Sightings | None = None) -> None:
        """Commit what a driver had under way, a Ready's persist and what waited for it, as the
        PRM does (services/prm.py, _carry_out): the log is fsynced with it if a message that
        waited reports the node's applied length."""
        persist, held = syncing
        self.commit(persist, sightings, durable_log=reports_applied_length(held))

    @property
    def unsynced(self) -> bool:
        """Whether some of its commits are not fsynced yet."""
        return bool(self._unsynced)

    def power_cut(self, rng: random.Random) -> int:
        """A power loss takes back the latest commits that were not fsynced, any number of
        them, each with every later one (SQLite's WAL keeps a prefix of its transactions).
        Returns how many it took back."""
        if not self._unsynced:
            return 0
        kept = rng.randint(0, len(self._unsynced))
        lost = len(self._unsynced) - kept
        if lost:
            self._state, self.sightings = self._unsynced[kept]
            del self._unsynced[kept:]
        return lost

    def copy(self) -> MemoryStorage:
        """The disk as it is now (a VM snapshot)."""
        twin = MemoryStorage(state=self.load())
        twin.identity, twin.stamp, twin.sightings = self.identity, self.stamp, self.sightings.copy()
        twin.sessions, twin.last = self.sessions, self.last
        return twin

    def demote(self) -> None:
        """Forget the acceptor state under a new nonce and session, keeping the log
        (storage.forget, Storage.demote)."""
        self._state = DurableState(voting=False, log=list(self._state.log))
        self.stamp = Stamp(next(_nonces), 0)
        self.sessions, self.last = (), None
        self.open()
        self._unsynced.clear()
