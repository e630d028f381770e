"""The acceptor role: promises and accepts, and the lost-storage rule.

A node whose storage was lost may have promised or accepted things it no longer remembers, so it
must not vote (promise or accept) until that cannot matter. Its rule:

1. Fence: it runs phase 1 with a fresh ballot r and needs promises from a majority of the cluster
   *not counting itself* (acceptors promise only ballots strictly above their promise). Any ballot
   b it accepted before the loss had a phase-1 majority that meets that majority, so r > b; and
   after promising r that majority accepts nothing below r. So a value can only ever be chosen
   below r in a slot where one of them had accepted something when it promised, and those slots
   are all below E = max(reported applied length, highest reported accepted slot + 1).
2. Catch up: it learns every chosen slot below E, then votes again (`recover_until` = E).

Afterwards its promises can hide only pre-loss accepts at ballots below r, in slots that are
chosen and which it reports as applied, or in slots where nothing can be chosen below r: the
usual Paxos argument (the highest reported ballot at or above the chosen one) is untouched.
"""

from __future__ import annotations

from paxmr.paxos.ballot import Ballot
from paxmr.paxos.durable import DurableState, Persist
from paxmr.paxos.log import Entry
from paxmr.paxos.messages import AcceptedValue


class Acceptor:
    def __init__(self, durable: DurableState) -> None:
        self.promised = durable.promised
        self.accepted = dict(durable.accepted)
        self.voting = durable.voting
        self.recover_until = durable.recover_until

    def may_promise(self, ballot: Ballot) -> bool:
        # Strictly greater: even with the random round a wiped node restarts from (storage.py),
        # a promise must never be repeated for a ballot this acceptor already promised.
        return self.voting and ballot > self.promised

    def may_accept(self, ballot: Ballot) -> bool:
        return self.voting and ballot >= self.promised

    def promise(
        self, ballot: Ballot, from_slot: int, persist: Persist
    ) -> tuple[AcceptedValue, ...]:
        self.raise_promise(ballot, persist)
        return tuple(
            AcceptedValue(slot, b, entry)
            for slot, (b, entry) in sorted(self.accepted.items())
            if slot >= from_slot
        )

    def raise_promise(self, ballot: Ballot, persist: Persist) -> None:
        if ballot > self.promised:
            self.promised = ballot
            persist.promised = ballot

    def accept(self, ballot: Ballot, slot: int, entry: Entry, persist: Persist) -> None:
        self.accepted[slot] = (ballot, entry)
        persist.accepted[slot] = (ballot, entry)

    def accepted_at(self, slot: int, ballot: Ballot) -> Entry | None:
        row = self.accepted.get(slot)
        return row[1] if row is not None and row[0] == ballot else None

    def fence(self, ballot: Ballot, until: int, persist: Persist) -> None:
        """Step 1 of the lost-storage rule is done: promises from a majority of others."""
        self.promised = max(self.promised, ballot)
        persist.promised = self.promised
        self.recover_until = until
        persist.recover_until = until

    def caught_up(self, length: int, persist: Persist) -> None:
        """Step 2: vote again once every slot below the fence point is applied."""
        if not self.voting and self.recover_until is not None and length >= self.recover_until:
            self.voting = True
            persist.voting = True

    def forget_below(self, length: int) -> None:
        """Chosen and applied slots need no accepted row any more."""
        if self.accepted and min(self.accepted) < length:
            self.accepted = {s: v for s, v in self.accepted.items() if s >= length}
