"""Cores broken on purpose, to show the simulator catches each mistake."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import msgpack

from paxmr.logobject import BadLogObject, LogObject, _digest
from paxmr.paxos import Ballot, CoreConfig, DurableState, Entry, Message, Node
from paxmr.paxos.acceptor import Acceptor
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
            self._note_len(src, msg.chosen_len)
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


def decode_unchecked(value: bytes) -> LogObject:
    """Defect 4: LogObject.decode as it was, with the digest step outside the checks."""
    try:
        body: Any = msgpack.unpackb(value, raw=False)
        if body["v"] != 1:
            raise BadLogObject(f"log object version {body['v']} is not 1")
        obj = LogObject(
            str(body["file"]),
            int(body["node"]),
            str(body["rid"]),
            tuple(body["words"]),
            tuple(body["counts"]),
            str(body["digest"]),
        )
    except (ValueError, KeyError, TypeError, msgpack.ExtraData) as exc:
        raise BadLogObject(f"not a log object: {exc}") from exc
    if _digest(obj.words, obj.counts) != obj.digest:
        raise BadLogObject("log object digest does not match its counts")
    return obj
