"""The acceptor role: promises and accepts, and the lost-storage rule.

A node whose storage was lost may have promised or accepted things it no longer remembers, so it
must not vote (promise or accept) until that cannot matter. Call the lost node's earlier life its
old incarnation. The rule:

0. Fresh ballots. Every campaign of a node that cannot vote starts at a random round in
   [1, FRESH_ROUNDS) above every round it knows of (Node._next_round), so its ballots differ
   from the old incarnation's, whose rounds it has forgotten: a stale or replayed reply to an
   old ballot cannot count for a new one, and no ballot of the old incarnation is ever taken up
   again. (The chance of a repeat is below the number of rounds the old incarnation used,
   divided by FRESH_ROUNDS, per campaign.)
1. Fence: it runs phase 1 with such a ballot r and needs an answer from *every* other voter of
   its epoch (learners never campaign), and promises from enough of them that every quorum
   holds one besides the lost node (Membership.fence_quorum: a quorum with an odd number of
   voters, one fewer with an even number). A voter whose storage votes answers only with a
   promise of r (a Nack is no answer), so in practice every such voter promises; the count
   matters where others cannot vote either. A voter whose storage cannot vote answers too, and
   gives up every ballot of its own below r.
   - Forgotten promises. The old incarnation may have promised some ballot p that then counts
     in p's phase-1 quorum although the new incarnation accepts below p. If p is a ballot of
     the old incarnation itself, step 0 makes it dead. Otherwise p was made by some other
     member q before the fence began, and q answered the fence: a voter promised r, above its
     promise, which is at least every ballot it campaigned at while voting (a voter's campaign
     promises its own ballot first) and every ballot it accepted at (Acceptor.accept); a
     non-voter gave up its ballots below r; in both cases q drops any campaign or leadership
     below r. A proposer never takes a ballot up again (rounds only grow: used_round is
     durable, see Node._next_round), so no phase 1 or 2 at a ballot made before the fence and
     below r completes after it: the forgotten promises count for nothing. (A non-voter's
     answer is not durable, so after a restart it may campaign below r again, at a new ballot
     that the old incarnation never promised; the voters that promised r refuse it.)
   - Forgotten accepts. A value chosen before the fence at some ballot b < r was accepted by a
     quorum; at least one of its members is a voter that promised r: the quorum holds at least
     quorum - 1 voters besides the lost node, the promises come from voters - quorum + 1 of the
     voters - 1 others, and the two counts add up to more than voters - 1. That voter reports
     the slot: as applied (below its applied length) or as an accepted row. So every slot in
     which a value can have been chosen below r lies below E = max(reported applied length,
     highest reported accepted slot + 1), and after promising r those voters accept nothing
     below r.
2. Catch up: it learns every chosen slot below E, then votes again (`recover_until` = E), with
   its promise at r or above. Meanwhile, leading at r, it accepts its own proposals at r
   (may_accept_own): the promises of r meet every quorum, so each is the one value that can have
   been chosen in its slot below r, and accepting grants no promise. Where the other voters
   that can vote are no quorum (two voters; four with two disks lost), a value the fence finds
   in flight is chosen only so, and the leader counts itself for its quorum (Node._has_quorum);
   should it lose the lead before it has caught up, its next campaign fences again.

Afterwards its promises can hide only accepts of its old incarnation at ballots below r, in slots
that are chosen and which it reports as applied, or in slots where nothing can be chosen below r;
and no forgotten promise can combine with its new accepts. The usual Paxos argument (the highest
reported ballot at or above the chosen one) is untouched: it needs every acceptor's promise to be
at least every ballot it accepted at, which accept() keeps.

Safety needs that many voters of the epoch (a majority, or half of an even count) to keep their
disks;
while fewer remain, the fence never completes, so the cluster stays unavailable rather than
forget acknowledged entries.
"""

from __future__ import annotations

from paxmr.paxos.ballot import Ballot
from paxmr.paxos.durable import DurableState, Persist
from paxmr.paxos.log import Entry
from paxmr.paxos.messages import MAX_BATCH, AcceptedValue, wire_cost


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

    def may_accept_own(self, ballot: Ballot) -> bool:
        """Whether a leader at `ballot` accepts its own proposals: as any voter, or, fenced at
        that ballot and catching up, as step 2 of the lost-storage rule allows."""
        return self.may_accept(ballot) or (
            self.recover_until is not None and ballot == self.promised
        )

    def rows(self, from_slot: int) -> list[AcceptedValue]:
        """Accepted rows from `from_slot` on, in slot order."""
        return [
            AcceptedValue(slot, *self.accepted[slot])
            for slot in sorted(s for s in self.accepted if s >= from_slot)
        ]

    def page(self, from_slot: int, budget: int) -> tuple[tuple[AcceptedValue, ...], bool]:
        """Accepted rows from `from_slot` on, up to `budget` bytes (at least one row), and
        whether more follow: a Promise fits a frame whatever is in flight."""
        rows: list[AcceptedValue] = []
        size = 0
        for row in self.rows(from_slot):
            cost = wire_cost(row.entry)
            if rows and (size + cost > budget or len(rows) == MAX_BATCH):
                return tuple(rows), True
            rows.append(row)
            size += cost
        return tuple(rows), False

    def raise_promise(self, ballot: Ballot, persist: Persist) -> None:
        if ballot > self.promised:
            self.promised = ballot
            persist.promised = ballot

    def accept(self, ballot: Ballot, slot: int, entry: Entry, persist: Persist) -> None:
        # Accepting at a ballot promises it too: a leader that could not vote when it won
        # (its own campaign promised nothing) and votes by now must not later promise a
        # ballot between its promise and its own, and accept below the value it accepted.
        self.raise_promise(ballot, persist)
        self.accepted[slot] = (ballot, entry)
        persist.accepted[slot] = (ballot, entry)

    def accepted_at(self, slot: int, ballot: Ballot) -> Entry | None:
        row = self.accepted.get(slot)
        return row[1] if row is not None and row[0] == ballot else None

    def fence(self, ballot: Ballot, until: int, persist: Persist) -> None:
        """Step 1 of the lost-storage rule is done: every other member answered the fence
        ballot, and enough voters promised it (Membership.fence_quorum)."""
        self.promised = max(self.promised, ballot)
        persist.promised = self.promised
        self.recover_until = until
        persist.recover_until = until

    def caught_up(self, length: int, persist: Persist) -> None:
        """Step 2: vote again once every slot below the fence point is applied."""
        if not self.voting and self.recover_until is not None and length >= self.recover_until:
            self.voting = True
            persist.voting = True

    def new_epoch(self, start: int, persist: Persist) -> None:
        """Entering the epoch that begins at slot `start` (membership.py). A fence covers the
        epoch it ran in: if its point is past the stop sign (`start` - 1), the stop sign was
        accepted before the fence finished, so the old incarnation may have entered the new
        epoch and promised there, where the fence asked no new member. It fences again."""
        self.discard_from(start, persist)
        if self.recover_until is not None and self.recover_until >= start:
            self.voting = False
            self.recover_until = None
            persist.voting = False
            persist.recover_until = None
            persist.unfenced = True

    def discard_from(self, slot: int, persist: Persist) -> None:
        """A new epoch begins at `slot`: rows of the old one there and above are void."""
        self.accepted = {s: v for s, v in self.accepted.items() if s < slot}
        persist.accepted = {s: v for s, v in persist.accepted.items() if s < slot}
        persist.discard_from = (
            slot if persist.discard_from is None else min(persist.discard_from, slot)
        )

    def forget_below(self, length: int) -> None:
        """Chosen and applied slots need no accepted row any more."""
        if self.accepted and min(self.accepted) < length:
            self.accepted = {s: v for s, v in self.accepted.items() if s >= length}
