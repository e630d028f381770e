"""Membership changes in the simulator's campaigns (paxmr/sim/members.py), and cores whose
membership rule is broken on purpose (tests/paxos/paxos_broken.py), caught by it."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import cast

import pytest

from paxmr.paxos import Node
from paxmr.paxos.membership import Membership
from paxmr.paxos.messages import Accept, Accepted, CatchupReply, CatchupRequest
from paxmr.paxos.node import RESEND_BYTES
from paxmr.sim.checker import Checker
from paxmr.sim.explore import Explorer
from paxmr.sim.faults import FAULT_KINDS
from paxmr.sim.members import OPERATIONS, Changes
from paxmr.sim.run import run_seeds
from paxmr.sim.world import EARLY, NodeFactory, World
from tests.paxos.paxos_broken import (
    DecidesPastStopSign,
    IgnoresEpochs,
    JoinsVoting,
    KeepsOldRows,
)
from tests.paxos.paxos_harness import Harness
from tests.paxos.test_paxos_membership import BIG, change
from tests.paxos.test_paxos_regressions import assert_safe
from tests.paxos.test_sim import first_violation

ALL = frozenset(FAULT_KINDS)


@pytest.mark.parametrize("nodes", [3, 5])
def test_changes_take_effect_under_every_fault_and_keep_the_invariants(nodes):
    seeds = 80 if nodes == 3 else 60  # on 3 the leader refuses more changes (see below)
    results = list(run_seeds(range(seeds), nodes, ALL, EARLY, trace=False, workers=1))
    assert [(r.seed, r.violations) for r in results if r.violations] == []
    assert sum(r.commits for r in results) == seeds * 40
    took = sum((r.changes for r in results), start=Counter())
    expected = set(OPERATIONS)
    if nodes == 3:
        # Replacing the leader of three needs both others to vote at that moment, or the
        # leader refuses (Node._change_leaves_no_quorum): none took effect in 120 seeds.
        expected.discard("replace-leader")
    assert set(took) >= expected, took  # every operation took effect somewhere


def test_only_changes_keep_the_invariants_on_both_schedules():
    for seed in range(20):
        for run in (World(seed, 3, frozenset({"member"})), Explorer(seed, 3, ALL)):
            result = run.run()
            assert result.violations == [], (seed, type(run).__name__, result.violations)


def test_a_joined_node_runs_the_production_node_on_storage_that_cannot_vote():
    world = World(2, 3, frozenset({"member"}))
    world.run()
    joined = [r for i, r in world.replicas.items() if i > 3]
    assert joined, "no node joined"
    for replica in joined:
        assert replica.node is not None
        assert replica.node.membership.epoch > 0  # it follows the log
    assert world.changes.took_effect["add"] > 0


def test_the_wipe_rule_follows_the_membership_the_log_names():
    checker = Checker()
    changes = Changes((1, 2, 3), checker)
    everyone = dict.fromkeys(range(1, 7), True)
    assert changes.survives_wipe(1, everyone, 0)
    assert not changes.survives_wipe(1, everyone | {2: False}, 0)
    # The log makes 4, 5, 6 voters too: a wipe of 1 needs four voting disks among the rest.
    grow = Membership(0, frozenset({1, 2, 3})).change([1, 2, 3, 4, 5, 6], [], {})
    checker.chosen[0] = ("\x1emembership:m1-promote", grow)
    assert changes.current().voters == frozenset(range(1, 7))
    assert changes.survives_wipe(1, everyone | {2: False}, 1)
    assert not changes.survives_wipe(1, everyone | {2: False, 4: False}, 1)
    # A node that is no longer a voter may always lose its disk.
    shrink = changes.current().change([4, 5, 6], [], {})
    checker.chosen[1] = ("\x1emembership:m2-remove", shrink)
    only = {1: False, 2: False, 3: False, 4: True, 5: True, 6: False}
    assert changes.survives_wipe(1, only, 2)
    # Chosen, but on no disk yet (a power cut took it): the six voters still count.
    assert not changes.survives_wipe(1, only, 1)


# Each broken membership rule, the schedule that finds it, the fault kinds, and a bound on the
# seeds searched (about twice the first seed that finds it today). JoinsVoting runs without
# `wipe`, so that only nodes that join start on empty storage: it is found only when a
# founding member's id rejoins on a new disk (a new id is never a voter of an epoch it has
# not applied). IgnoresEpochs on 3 members and KeepsOldRows are found by the built schedules
# below (the random ones did not find them in the seeds tried; see the README). JoinsVoting on
# 5 members is first found at seed 1,409 since the leader refuses changes that leave too few
# voters able to vote: too long for CI, run by hand. DecidesPastStopSign on 5 members: the
# timed schedule finds it at seed 54; the async one found it at seed 115 until its disks
# modelled commits without an fsync, and in none of 3,000 seeds since.
NO_WIPE = ALL - {"wipe"}
MEMBER_CAUGHT = [
    pytest.param(3, 70, "async", ALL, DecidesPastStopSign, id="past-stop-sign-3"),
    pytest.param(5, 110, "timed", ALL, DecidesPastStopSign, id="past-stop-sign-5"),
    pytest.param(5, 400, "timed", ALL, IgnoresEpochs, id="no-epoch-check-5"),
    pytest.param(3, 640, "timed", NO_WIPE, JoinsVoting, id="joined-votes-3"),
]


@pytest.mark.parametrize(("nodes", "limit", "schedule", "kinds", "factory"), MEMBER_CAUGHT)
def test_a_broken_membership_rule_is_caught(nodes, limit, schedule, kinds, factory):
    first_violation(nodes, set(kinds), limit, schedule, node_factory=factory)


def _admits_any_change(factory: NodeFactory) -> NodeFactory:
    """The core with its leader's liveness check off (Node._change_leaves_no_quorum refuses
    the swap below, whose new voters have not answered it): safety must not rest on it."""
    assert isinstance(factory, type)
    admits = type(
        f"AdmitsAnyChange{factory.__name__}",
        (factory,),
        {"_change_leaves_no_quorum": lambda _self, _lead, _entry: None},
    )
    return cast("NodeFactory", admits)


def _old_rows_schedule(factory: NodeFactory) -> Harness:
    """Five founders; a change of two voters at once (which the rule admits) puts a node that
    accepted an old-epoch row at a high ballot next to two voters that never saw that ballot.
    Those two choose Z at a lower ballot in the new epoch; the holder of the old row then
    campaigns with one of them, and the old row must not outrank Z (membership.py: entering
    an epoch drops the old rows). The random schedules did not find this in the seeds tried
    (README): it needs a two-voter change and four messages kept from two nodes."""
    h = Harness(5, BIG, factory=_admits_any_change(factory))
    h.fire(1)
    h.deliver()
    # 4 and 5 become learners; their disks still vote (they were founders).
    change(h, 1, "demote", [1, 2, 3], [4, 5])
    h.deliver()
    h.fire(1)  # node 1 leads on in epoch 1
    h.deliver()
    # Node 2 takes over at a round 4 and 5 never hear of (its first two campaigns are lost).
    h.cut = {4, 5}
    for _ in range(2):
        h.fire(2)
        h.wire.clear()
    h.fire(2)
    h.deliver()
    assert h.node(2).role == "leader"
    high = h.node(2).ballot
    # The stop sign (voters 1, 4, 5) in slot 1, and X after it in slot 2: accepted by 1, 2, 3.
    change(h, 2, "swap", [1, 4, 5], [2, 3])
    h.submit(2, "X")
    h.deliver()
    assert h.node(1).membership.voters == frozenset({1, 4, 5})
    # 4 and 5 catch up (catch-up carries no ballot) and enter the new epoch.
    h.cut = set()
    for i in (4, 5):
        h.fire(i)
        h.deliver()
        assert h.node(i).membership.voters == frozenset({1, 4, 5})
    # Without node 1, 4 leads at a ballot below `high` and chooses Z in slot 2 with 5; 5 does
    # not learn that Z is chosen.
    h.cut = {1}
    h.fire(4)
    h.deliver_where(lambda s, d, _: {s, d} <= {4, 5})
    assert h.node(4).role == "leader"
    assert h.node(4).ballot < high
    h.submit(4, "Z")
    h.deliver_where(lambda s, d, m: (s, d) == (4, 5) and isinstance(m, Accept) and bool(m.entries))
    h.deliver_where(lambda s, d, m: (s, d) == (5, 4) and isinstance(m, Accepted))
    assert h.node(4).log.positions["Z"][1] == 2  # chosen, and acknowledged
    h.wire.clear()
    # Node 1 campaigns with 5: Z is what it must propose in slot 2.
    h.cut = {4}
    h.fire(1)
    h.deliver()
    return h


def test_old_rows_kept_across_an_epoch_are_caught_by_a_built_schedule():
    assert_safe(_old_rows_schedule(Node))
    broken = _old_rows_schedule(KeepsOldRows)
    with pytest.raises(AssertionError, match="slot 2: different values applied"):
        assert_safe(broken)


def _epoch_schedule(factory: NodeFactory) -> Harness:
    """Three founders, one change of no members at all (a stop sign still ends the epoch).
    Node 3 misses the stop sign; node 1 leads on in the new epoch and gets node 3, still in
    the old one, to promise and accept Z in slot 1: Z is chosen by {1, 3} and acknowledged.
    Node 3 then applies the stop sign, which drops its rows above it (its Z), and 2 and 3
    choose W in slot 1. A node must act on ballot messages only in its own epoch
    (membership.py): node 3 catches up instead. Not found on 3 members by the random
    schedules in the seeds tried (README); found on 5 (MEMBER_CAUGHT)."""
    # batch_bytes of two re-send allowances: a node behind asks again for its catch-up after
    # two heartbeats (Node._catch_up), before its election timer, as this schedule needs.
    config = replace(BIG, catchup_batch=1, batch_bytes=2 * RESEND_BYTES)
    h = Harness(3, config, factory=factory)
    h.fire(1)
    h.deliver()
    h.cut = {3}
    change(h, 1, "same", [1, 2, 3])  # chosen by 1 and 2
    h.deliver()
    h.cut = set()
    h.fire(1)  # node 1 leads on in epoch 1; catch-up is held back
    catch_up = (CatchupRequest, CatchupReply)
    h.deliver_where(lambda _s, _d, m: not isinstance(m, catch_up))
    assert h.node(1).role == "leader"
    h.wire.clear()
    h.submit(1, "Z")
    h.take(lambda s, d, _: (s, d) == (1, 2))
    h.deliver_where(lambda s, d, m: {s, d} == {1, 3} and isinstance(m, Accept | Accepted))
    h.wire.clear()
    # Node 3 fetches the stop sign alone (batches of one slot) and enters epoch 1.
    h.fire(3)
    h.deliver_where(
        lambda s, d, m: (
            {s, d} == {1, 3}
            and isinstance(m, catch_up)
            and (not isinstance(m, CatchupReply) or m.from_slot == 0)
        )
    )
    h.wire.clear()
    assert h.node(3).membership.epoch == 1
    h.cut = {1}
    h.fire(2)
    h.deliver()
    h.submit(2, "W")
    h.deliver()
    h.fire(2)
    h.deliver()
    return h


def test_ballot_messages_of_another_epoch_are_caught_by_a_built_schedule():
    assert_safe(_epoch_schedule(Node))
    broken = _epoch_schedule(IgnoresEpochs)
    with pytest.raises(AssertionError, match="slot 1: different values applied"):
        assert_safe(broken)
