"""Operator mistakes in the simulator (issue 9): each must be refused or harmless. They are off
by default (paxmr.sim.faults.MISTAKE_KINDS) because today's core is not safe against two of them:
those tests are strict xfails, so they say what is wanted and fail once the core is fixed."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from paxmr.sim.command import sim
from paxmr.sim.explore import Explorer
from paxmr.sim.faults import FAULT_KINDS, MISTAKE_KINDS
from paxmr.sim.run import run_seeds
from paxmr.sim.simulation import EARLY

CLASSIC = frozenset(FAULT_KINDS) - {"member"}
# Async seeds within which a PRM that took the configured member list over the stored one
# (planted in the simulator: the stale list given to a node that kept its disk) is caught on 5
# members (first at seed 45).
STALE_SEEDS = 150
# The first async seed (3 members) at which each known hole breaks agreement today.
HOLES = [pytest.param("reinit", 844, id="reinit"), pytest.param("restore-old", 77, id="restore")]


def test_mistakes_are_off_by_default():
    assert not set(MISTAKE_KINDS) & set(FAULT_KINDS)
    result = CliRunner().invoke(sim, ["--schedule", "async", "--seeds", "3", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert not set(json.loads(result.output)["faults"]) & set(MISTAKE_KINDS)


def test_the_command_takes_a_mistake_kind():
    args = ["--schedule", "async", "--seeds", "2", "--faults", "drop,stale-members", "-o", "json"]
    result = CliRunner().invoke(sim, args)
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["faults"]) == {"drop", "stale-members"}


@pytest.mark.parametrize("nodes", [3, 5])
def test_a_stale_member_list_after_a_lost_disk_is_harmless(nodes):
    """With no stored identity the PRM takes the configured members; the voters of the log's
    epoch still decide, so the node's wrong list must not break agreement."""
    kinds = CLASSIC | {"stale-members"}
    results = list(run_seeds(range(STALE_SEEDS), nodes, kinds, EARLY, False, 1, "async"))
    assert [(r.seed, r.violations) for r in results if r.violations] == []
    assert sum(r.faults["stale-members"] for r in results) > 0


@pytest.mark.xfail(
    strict=True,
    reason="known holes (README): `init --found` with the cluster's own id on a member that lost"
    " its disk makes an empty voter when no peer it reaches has applied anything; a"
    " restored old prm.db votes with promises and accepts forgotten",
)
@pytest.mark.parametrize(("kind", "seed"), HOLES)
def test_a_reinit_or_a_restored_old_database_is_harmless(kind, seed):
    assert Explorer(seed, 3, CLASSIC | {kind}).run().violations == []
