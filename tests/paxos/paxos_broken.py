"""Cores broken on purpose, to show the simulator catches each mistake."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from paxmr.paxos import Ballot, CoreConfig, DurableState, Node
from paxmr.paxos.acceptor import Acceptor
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
