"""The state a node keeps on disk, and the changes it asks the driver to make durable."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from paxmr.paxos.ballot import ZERO, Ballot
from paxmr.paxos.log import Entry, LogEntry, StoredLog


@dataclass
class DurableState:
    """What a node is constructed from. `voting` is False for a node whose storage was lost: it
    may not promise or accept until it has fenced older ballots and caught up to `recover_until`
    (see acceptor.py)."""

    promised: Ballot = ZERO
    used_round: int = 0
    accepted: dict[int, tuple[Ballot, Entry]] = field(default_factory=dict)
    log: list[LogEntry] = field(default_factory=list)
    voting: bool = True
    recover_until: int | None = None
    # The applied log before `log`, as storage loads it without its values (paxos/log.py).
    stored: StoredLog | None = None


@dataclass
class Persist:
    """Changes since the last Ready. The driver commits them in one transaction (one fsync)
    before it sends any message or reply of the same Ready. Accepted rows for slots below the
    new log length may be dropped: those slots are chosen."""

    promised: Ballot | None = None
    used_round: int | None = None
    accepted: dict[int, tuple[Ballot, Entry]] = field(default_factory=dict)
    log: list[LogEntry] = field(default_factory=list)
    voting: bool | None = None
    recover_until: int | None = None
    # Drop accepted rows from this slot on before adding `accepted`: a new epoch began
    # (membership.py); `accepted` then holds only rows of the new epoch.
    discard_from: int | None = None
    # Forget the fence (recover_until) before setting `recover_until`: see Acceptor.new_epoch.
    unfenced: bool = False

    def __bool__(self) -> bool:
        return (
            self.discard_from is not None
            or self.unfenced
            or self.promised is not None
            or self.used_round is not None
            or bool(self.accepted)
            or bool(self.log)
            or self.voting is not None
            or self.recover_until is not None
        )

    def needs_fsync(self, *, durable_log: bool, unsynced: bool) -> bool:
        """Whether committing this must fsync (storage.Storage.commit says why the rest need
        not): any acceptor state does; applied entries alone do only when the driver asks for
        a durable log (a Promise waits for the commit: ready.reports_applied_length) and some
        of the log is not fsynced yet (`unsynced`: the last commit did not fsync)."""
        return bool(replace(self, log=[])) or (durable_log and (unsynced or bool(self.log)))

    def apply_to(self, state: DurableState) -> None:
        """What committing this does; storage back-ends and tests share this meaning."""
        if self.promised is not None:
            state.promised = self.promised
        if self.used_round is not None:
            state.used_round = self.used_round
        if self.discard_from is not None:
            state.accepted = {s: v for s, v in state.accepted.items() if s < self.discard_from}
        state.accepted.update(self.accepted)
        if self.log:
            if self.log[0].slot != len(state.log):
                raise ValueError("log entries must extend the stored log contiguously")
            state.log.extend(self.log)
            end = len(state.log)
            state.accepted = {s: v for s, v in state.accepted.items() if s >= end}
        if self.voting is not None:
            state.voting = self.voting
        if self.unfenced:
            state.recover_until = None
        if self.recover_until is not None:
            state.recover_until = self.recover_until
