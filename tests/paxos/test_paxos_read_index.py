"""The read index behind `--consistent` reads (Node.read_index), driven by hand."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from paxmr.paxos import Ballot, Node
from paxmr.paxos.messages import ReadProbe, ReadProbeAck
from tests.paxos.paxos_harness import CONFIG, Harness

BIG = replace(CONFIG, max_value_bytes=1024)  # a membership change names every member


def answers(h: Harness, at: int, read_id: int) -> list[int | None]:
    """Every answer node `at` gave to `read_id` so far."""
    return [index for i, r in h.readies if i == at for rid, index in r.reads if rid == read_id]


def ask(h: Harness, at: int, read_id: int) -> None:
    h.node(at).read_index(read_id, h.now)
    h.flush(at)


def test_a_leader_answers_once_a_quorum_confirmed_it_leads():
    h = Harness(3)
    leader = h.elect()
    h.submit(leader, "a")
    h.deliver()
    ask(h, leader, 1)
    assert answers(h, leader, 1) == []  # not before a round of probes is answered
    h.deliver()
    assert answers(h, leader, 1) == [h.node(leader).log.length]


def test_a_follower_gets_the_index_from_its_leader():
    h = Harness(3)
    leader = h.elect()
    for k in range(3):
        h.submit(leader, f"a{k}")
    follower = next(i for i in h.members if i != leader)
    ask(h, follower, 5)
    h.deliver()
    [index] = answers(h, follower, 5)
    assert index == h.node(leader).log.length
    assert index is not None
    assert "a2" in {e.request_id for e in h.node(leader).log.entries[:index]}


def test_a_new_read_needs_a_new_round_of_answers():
    """Answers to a round sent before a read came in prove nothing about the time of the read."""
    h = Harness(3)
    leader = h.elect()
    ask(h, leader, 1)
    h.deliver()
    assert answers(h, leader, 1) != []
    ask(h, leader, 2)  # the peers' answers to round 1 are in; round 2 is not sent yet
    assert answers(h, leader, 2) == []
    h.deliver()
    assert answers(h, leader, 2) == [h.node(leader).log.length]


def test_answers_in_another_ballot_confirm_nothing():
    """An answer to a probe of this leader's earlier ballot (it led before, and was outbid
    meanwhile) says nothing about its present ballot."""
    h = Harness(3)
    leader = h.elect()
    node = h.node(leader)
    ask(h, leader, 1)
    h.take(lambda _s, _d, m: isinstance(m, ReadProbe))
    earlier = Ballot(node.ballot.round - 1, leader)
    for peer in node.voting_peers:
        node.receive(peer, ReadProbeAck(earlier, 1, node.membership.epoch), h.now)
        h.flush(leader)
    assert answers(h, leader, 1) == []


def test_a_deposed_leader_that_does_not_know_it_never_answers_a_stale_index():
    """The leader freezes (SIGSTOP), the others elect another and commit; resumed, the old
    leader still thinks it leads when the read comes in."""
    h = Harness(3)
    old = h.elect()
    h.submit(old, "before")
    h.deliver()
    frozen = h.node(old)
    h.nodes[old] = None  # no timers, and what is sent to it is lost
    new = h.elect()
    assert new != old
    h.submit(new, "after")
    h.advance(0.2)
    committed = h.node(new).log.length
    assert "after" in h.node(new).log.positions
    h.nodes[old] = frozen
    assert frozen.role == "leader"
    assert "after" not in frozen.log.positions
    ask(h, old, 9)
    h.deliver()
    h.advance(1.0)  # it hears the new leader, or misses its quorum: it steps down
    got = answers(h, old, 9)
    assert all(index is None or index >= committed for index in got), got
    ask(h, old, 10)  # now a follower: its leader answers
    h.deliver()
    assert any(i is not None and i >= committed for i in answers(h, old, 10))


def test_no_index_while_stopped_or_without_a_leader():
    h = Harness(3)
    node: Node = h.node(1)
    ask(h, 1, 1)  # no leader yet
    assert answers(h, 1, 1) == [None]
    h.elect()
    node.stop(h.now)
    ask(h, 1, 2)
    assert answers(h, 1, 2) == [None]


def test_no_index_while_a_membership_change_is_under_way():
    """Entries of the next epoch may be committed already where this leader cannot see them."""
    h = Harness(3, BIG)
    leader = h.elect()
    node = h.node(leader)
    node.change_membership("shrink", sorted(node.membership.voters), [], {}, h.now)
    h.flush(leader)
    ask(h, leader, 3)
    assert answers(h, leader, 3) == [None]


@pytest.mark.parametrize("seed", range(12))
def test_no_answered_index_misses_an_entry_applied_anywhere_before_the_read(seed):
    """Random freezes, thaws, requests, partial deliveries and reads on 3, 5 or 7 nodes: every
    index answered is at least the longest log any node had applied when the read was asked
    (an entry applied somewhere was committed)."""
    rng = random.Random(seed)
    h = Harness(3 + 2 * (seed % 3), seed=seed)
    h.elect()
    frozen: dict[int, Node] = {}
    asked: dict[int, tuple[int, int]] = {}  # read id -> (node, longest applied log then)
    for step in range(400):
        live = [i for i in h.members if i not in frozen]
        action = rng.random()
        if action < 0.25:
            h.submit(rng.choice(live), f"r{step}")
        elif action < 0.5:
            at = rng.choice(live)
            asked[step] = (at, max(len(log) for log in h.applied.values()))
            ask(h, at, step)
        elif action < 0.58 and len(frozen) < len(h.members) // 2:
            i = rng.choice(live)
            frozen[i] = h.node(i)
            h.nodes[i] = None  # SIGSTOP: no timers, what is sent to it is lost
        elif action < 0.66 and frozen:
            i = rng.choice(sorted(frozen))
            h.nodes[i] = frozen.pop(i)
        elif action < 0.83:
            h.deliver(limit=rng.randrange(1, 6))
        else:
            h.advance(rng.uniform(0.02, 0.4))
    answered = 0
    for read_id, (at, bound) in asked.items():
        for index in answers(h, at, read_id):
            assert index is None or index >= bound, (read_id, at, index, bound)
            answered += index is not None
    assert answered > len(asked) // 4  # the check was not vacuous
