"""In-memory storage with the same commit semantics as paxmr.storage.Storage."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import TYPE_CHECKING

from paxmr.paxos import DurableState
from paxmr.stamps import Sightings, Stamp

if TYPE_CHECKING:
    from paxmr.paxos import Persist

# A new storage's nonce: only equality matters (paxmr/stamps.py), so a count will do.
_nonces = itertools.count(1)


class MemoryStorage:
    """What a node's disk holds. Only `commit` changes it, so whatever a crash discards is
    exactly what the driver had not committed yet. Like prm.db it counts its commits under its
    nonce (`stamp`) and keeps what its node saw of its peers as of its last commit."""

    def __init__(self, *, bootstrap: bool = True, state: DurableState | None = None) -> None:
        """An empty disk (voting if `bootstrap`), or one that holds `state` (a restored copy)."""
        self._state = state if state is not None else DurableState(voting=bootstrap)
        # A founding member's storage records the cluster's identity (`paxmr init --found`);
        # a node that lost its disk or joined has none.
        self.identity = bootstrap
        self.stamp = Stamp(next(_nonces), 0)
        self.sightings = Sightings()

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

    def commit(self, persist: Persist, sightings: Sightings | None = None) -> None:
        persist.apply_to(self._state)
        self.stamp = Stamp(self.stamp.nonce, self.stamp.writes + 1)
        if sightings is not None:
            self.sightings = sightings.copy()

    def copy(self) -> MemoryStorage:
        """The disk as it is now (a VM snapshot)."""
        twin = MemoryStorage(state=self.load())
        twin.identity, twin.stamp, twin.sightings = self.identity, self.stamp, self.sightings.copy()
        return twin

    def demote(self) -> None:
        """Forget the acceptor state under a new nonce, keeping the log (storage.forget)."""
        self._state = DurableState(voting=False, log=list(self._state.log))
        self.stamp = Stamp(next(_nonces), 0)
