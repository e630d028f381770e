"""In-memory storage with the same commit semantics as paxmr.storage.Storage."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from paxmr.paxos import DurableState

if TYPE_CHECKING:
    from paxmr.paxos import Persist


class MemoryStorage:
    """What a node's disk holds. Only `commit` changes it, so whatever a crash discards is
    exactly what the driver had not committed yet."""

    def __init__(self, *, bootstrap: bool = True, state: DurableState | None = None) -> None:
        """An empty disk (voting if `bootstrap`), or one that holds `state` (a restored copy)."""
        self._state = state if state is not None else DurableState(voting=bootstrap)
        # A founding member's storage records the cluster's identity (`paxmr init --found`);
        # a node that lost its disk or joined has none.
        self.identity = bootstrap

    @property
    def voting(self) -> bool:
        return self._state.voting

    @property
    def length(self) -> int:
        """How many log entries it holds."""
        return len(self._state.log)

    def load(self) -> DurableState:
        return replace(self._state, accepted=dict(self._state.accepted), log=list(self._state.log))

    def commit(self, persist: Persist) -> None:
        persist.apply_to(self._state)
