"""Membership changes in the simulator's campaigns (paxmr/sim/members.py), and cores whose
membership rule is broken on purpose (tests/paxos/paxos_broken.py), caught by it."""

from __future__ import annotations

from collections import Counter

import pytest

from paxmr.paxos.membership import Membership
from paxmr.sim.checker import Checker
from paxmr.sim.explore import Explorer
from paxmr.sim.faults import FAULT_KINDS
from paxmr.sim.members import OPERATIONS, Changes
from paxmr.sim.run import run_seeds
from paxmr.sim.world import EARLY, World
from tests.paxos.paxos_broken import (
    DecidesPastStopSign,
    IgnoresEpochs,
    JoinsVoting,
)
from tests.paxos.test_sim import first_violation

ALL = frozenset(FAULT_KINDS)


@pytest.mark.parametrize("nodes", [3, 5])
def test_changes_take_effect_under_every_fault_and_keep_the_invariants(nodes):
    results = list(run_seeds(range(40), nodes, ALL, EARLY, trace=False, workers=1))
    assert [(r.seed, r.violations) for r in results if r.violations] == []
    assert sum(r.commits for r in results) == 40 * 40
    took = sum((r.changes for r in results), start=Counter())
    assert set(took) == set(OPERATIONS), took  # every operation took effect somewhere


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
    assert changes.survives_wipe(1, everyone)
    assert not changes.survives_wipe(1, everyone | {2: False})
    # The log makes 4, 5, 6 voters too: a wipe of 1 needs four voting disks among the rest.
    grow = Membership(0, frozenset({1, 2, 3})).change([1, 2, 3, 4, 5, 6], [], {})
    checker.chosen[0] = ("\x1emembership:m1-promote", grow)
    assert changes.current().voters == frozenset(range(1, 7))
    assert changes.survives_wipe(1, everyone | {2: False})
    assert not changes.survives_wipe(1, everyone | {2: False, 4: False})
    # A node that is no longer a voter may always lose its disk.
    shrink = changes.current().change([4, 5, 6], [], {})
    checker.chosen[1] = ("\x1emembership:m2-remove", shrink)
    assert changes.survives_wipe(1, {1: False, 2: False, 3: False, 4: True, 5: True, 6: False})


# Each broken membership rule, the schedule that finds it, the fault kinds, and a bound on the
# seeds searched (about twice the first seed that finds it today). JoinsVoting runs without
# `wipe`, so that only nodes that join start on empty storage: it is found only when a
# founding member's id rejoins on a new disk (a new id is never a voter of an epoch it has
# not applied; see the README).
NO_WIPE = ALL - {"wipe"}
MEMBER_CAUGHT = [
    pytest.param(3, 100, "timed", ALL, DecidesPastStopSign, id="past-stop-sign-3"),
    pytest.param(5, 100, "timed", ALL, DecidesPastStopSign, id="past-stop-sign-5"),
    pytest.param(3, 700, "timed", ALL, IgnoresEpochs, id="no-epoch-check-3"),
    pytest.param(5, 200, "timed", ALL, IgnoresEpochs, id="no-epoch-check-5"),
    pytest.param(3, 350, "timed", NO_WIPE, JoinsVoting, id="joined-votes-3"),
]


@pytest.mark.parametrize(("nodes", "limit", "schedule", "kinds", "factory"), MEMBER_CAUGHT)
def test_a_broken_membership_rule_is_caught(nodes, limit, schedule, kinds, factory):
    first_violation(nodes, set(kinds), limit, schedule, node_factory=factory)
