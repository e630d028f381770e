"""Cores broken on purpose, to show the simulator catches each mistake."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from paxmr.paxos import Ballot, CoreConfig, DurableState, Entry, Message, Node
from paxmr.paxos.acceptor import Acceptor
from paxmr.paxos.membership import Membership
from paxmr.paxos.messages import AcceptedValue, Nack
from paxmr.paxos.node import _Campaign, _Leadership


class LowerBallotAcceptor(Acceptor):
    def may_accept(self, ballot: Ballot) -> bool:
        return self.voting  # ignores its promise


class AcceptsLowerBallots(Node):
    def _make_acceptor(self, durable: DurableState) -> Acceptor:
        return LowerBallotAcceptor(durable)


class SkipsPhaseOne(Node):
    """After losing leadership it takes a new ballot and proposes without phase 1."""

    _led_before = False

    def _start_campaign(self, now: float) -> None:
        if not self._led_before:
            super()._start_campaign(now)
            return
        self._step_down(now)
        round_ = max(self._used_round, self._seen_round, self.acceptor.promised.round) + 1
        self._used_round = self._seen_round = round_
        self._out.persist.used_round = round_
        ballot = Ballot(round_, self.id)
        self.acceptor.raise_promise(ballot, self._out.persist)
        self._lead = _Leadership(ballot, now, self.log.length, now + self.config.heartbeat_interval)
        self.leader = self.id
        for pending in self._pending.values():
            self._route(pending.request)

    def _become_leader(self, campaign: _Campaign, now: float) -> None:
        self._led_before = True
        super()._become_leader(campaign, now)


def votes_without_storage(
    node_id: int,
    members: Sequence[int],
    durable: DurableState,
    config: CoreConfig,
    rng: random.Random,
    now: float,
) -> Node:
    """Ignores the lost-storage rule: a wiped replica votes at once."""
    return Node(node_id, members, replace(durable, voting=True), config, rng, now)


# -- the four defects of issue 8, planted again --------------------------------------------


class KeepsLeadingAfterConflict(Node):
    """Defect 1: a leader that learns from catch-up that another value was chosen in a slot it
    proposed for leads on (and announces the slot as chosen); a Nack for an older ballot of
    its own does not end its leadership."""

    def _learn(self, slot: int, entry: Entry, now: float) -> None:
        self.log.learn(slot, entry)

    def receive(self, src: int, msg: Message, now: float) -> None:
        if isinstance(msg, Nack) and not self.stopped and src in self.peers:
            self._heard[src] = now
            self._note_len(src, msg.length)
            self._seen_round = max(self._seen_round, msg.promised.round)
            if self.role != "follower" and msg.ballot == self.ballot < msg.promised:
                self._step_down(now)
            return
        super().receive(src, msg, now)


class FencesWithAMajority(Node):
    """Defect 2: the lost-storage fence counts promises from a majority of the others (not an
    answer from every one), and a wiped node restarts from a random round in [2^40, 2^41)
    instead of jumping above what it knows."""

    def __init__(
        self,
        node_id: int,
        members: Sequence[int],
        durable: DurableState,
        config: CoreConfig,
        rng: random.Random,
        now: float,
    ) -> None:
        if not durable.voting and durable.used_round == 0 and durable.recover_until is None:
            durable = replace(durable, used_round=2**40 + rng.randrange(2**40))
        super().__init__(node_id, members, durable, config, rng, now)

    def _next_round(self) -> int:
        return max(self._used_round, self._seen_round, self.acceptor.promised.round) + 1

    def _may_campaign(self) -> bool:
        return True  # no probe first: it needs no one but a majority

    def _check_elected(self, campaign: _Campaign, now: float) -> None:
        if campaign.votes(self.membership.voters) >= self.quorum:
            self._become_leader(campaign, now)


class UnpagedAcceptor(Acceptor):
    def page(self, from_slot: int, budget: int) -> tuple[tuple[AcceptedValue, ...], bool]:
        rows, _ = super().page(from_slot, 2**62)
        return rows, False


class SendsWholePromises(Node):
    """Defect 3: a Promise carries every accepted value at once, whatever its size."""

    def _make_acceptor(self, durable: DurableState) -> Acceptor:
        return UnpagedAcceptor(durable)


def words_unchecked(stream: Any, n: int) -> None:
    """Defect 4 as the piecewise reader could bring it back: a forged value's words not
    checked (logobject._check_words), so the digest step raises TypeError on a word that is no
    bytes instead of refusing the value."""
    stream.take(n)


# -- membership changes (issue 9), planted wrong --------------------------------------------


class DecidesPastStopSign(Node):
    """A leader decides slots beyond a membership entry in the old epoch: with the old voters'
    quorum, where the new epoch's voters may choose other values."""

    def _decide(self, lead: _Leadership) -> bool:
        voters = self.membership.voters
        slot = self.log.length
        learned = False
        while True:
            entry = self.log.learned(slot)
            if entry is None:
                proposal = lead.proposals.get(slot)
                if proposal is None or len(proposal.acks & voters) < self.quorum:
                    return learned
                self.log.learn(slot, proposal.entry)
                learned = True
            slot += 1


class IgnoresEpochs(Node):
    """Acts on ballot messages of any epoch: old-epoch promises and accepts count in the new."""

    def _same_epoch(self, src: int, msg: Any, now: float) -> bool:
        return True


class KeepsOldRows(Node):
    """Enters an epoch without dropping the rows it accepted above the stop sign in the old
    one: a new-epoch leader may take them up as if accepted in its own epoch."""

    def _enter_epoch(self, membership: Membership) -> None:
        lead = self._lead
        if lead:
            for peer in self.peers:
                self._send(peer, self._accept_msg(lead, ()))
        self._set_membership(membership)
        self._step_down(self._now)
        self.leader = None
        if lead and self.is_voter:
            self._election_at = self._now


class JoinsVoting(Node):
    """A node that starts on empty storage votes at once (bootstrap storage), as `paxmr init`
    on a joining host would give it; run without the `wipe` kind, only joining nodes start so."""

    def __init__(
        self,
        node_id: int,
        members: Sequence[int],
        durable: DurableState,
        config: CoreConfig,
        rng: random.Random,
        now: float,
    ) -> None:
        fresh = DurableState(voting=False)
        if durable == fresh:
            durable = replace(durable, voting=True)
        super().__init__(node_id, members, durable, config, rng, now)
