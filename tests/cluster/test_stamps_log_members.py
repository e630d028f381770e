"""A rolled-back node is told at start by the members it reaches (storage.py, README "Members"),
members added through the log included: `paxmr member add` puts a node's address in the log,
not in the other nodes' configuration files."""

from __future__ import annotations

import pytest

from paxmr import local
from tests.cluster.test_identity import _revert, _snapshot
from tests.cluster.test_membership import _new_node
from tests.support.local import (
    Cluster,
    running_cluster,
    service_env,
    sigkill,
    small_tally,
)
from tests.support.wait import CONVERGE_S, wait_until

pytestmark = pytest.mark.integration


def test_a_reverted_snapshot_is_caught_at_start_by_a_member_added_through_the_log() -> None:
    """Nodes 1-3 founded; node 4 joined with `member add`, so only its own configuration and
    the log know its address. Node 2 is reverted to a VM snapshot while nodes 1 and 3 are
    down; node 4, up, saw node 2's later votes (as their leader or relayed). Asked at start,
    node 4 would show node 2 its stamp, and node 2 would be demoted in the same process
    before it votes."""
    with running_cluster(tallies=True) as cluster:
        new, address = _new_node(cluster)
        small_tally(new)
        grown = Cluster(cluster.root, [*cluster.nodes, new], cluster.mappers)
        one, two, three = cluster.nodes
        added = one.cli_json("member", "add", str(new.id), address, "--wait", "30")
        assert added["role"] == "voter", added
        wait_until(lambda: new.status()["voting"], "node 4 votes", timeout=CONVERGE_S)
        one.replicate("small_reduced")
        grown.converged(timeout=CONVERGE_S)
        snapshot = two.settings.state_dir.parent / "snapshot"
        _snapshot(two, snapshot)
        for _ in range(3):  # node 2 votes on each; node 4 hears of it
            grown.node(grown.leader()).replicate("small_reduced")
        grown.converged(timeout=CONVERGE_S)
        sigkill(one.prm_pid())
        sigkill(three.prm_pid())
        _revert(two, snapshot)
        with service_env():
            local.restart(cluster.root, two.id, "prm")
        # Told at start: logged before the PRM serves (restart returns once it does), with
        # no connection refused for it (told later: a peer's hello is refused first).
        events = two.log_events("storage_demoted")
        refused = [str(e["reason"]) for e in two.log_events("peer_refused")]
        assert events, f"node 2 started voting with its reverted storage (later: {refused})"
        assert f"node {new.id} saw it hold" in str(events[0]["reason"]), events
        assert not refused, refused
