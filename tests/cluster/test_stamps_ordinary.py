"""Ordinary operations never demote a healthy node (storage.py: stamps, retired nonces, relays).
A storage demoted by mistake forgets its promises and accepts: one node so costs a fence and a
catch-up, a majority so costs the cluster's availability, or a value accepted but not yet
known chosen."""

from __future__ import annotations

import pytest

from paxmr import local
from tests.support.local import running_cluster, service_env, sigkill
from tests.support.wait import CONVERGE_S, wait_until

pytestmark = pytest.mark.integration


def test_a_node_with_a_stale_view_of_a_restored_peer_demotes_nobody() -> None:
    """Node R is restored from a backup (a new storage, so a new nonce) while node S is down;
    its other peers see R's new nonce and retire the old one. S comes back with R's old stamp
    in its database and relays it to them before it hears of R's new storage. Neither that
    stale relay nor a rolling restart of every node afterwards (each peer's hello then shows
    R what it holds of it, retired nonces included) may demote anyone."""
    with running_cluster(tallies=True) as cluster:
        leader = cluster.node(cluster.leader())
        restored, stale = (n for n in cluster.nodes if n.id != leader.id)
        leader.replicate("small_reduced")
        cluster.converged(timeout=CONVERGE_S)
        done = restored.cli("-o", "json", "backup", "b0")
        assert done.returncode == 0, done
        copy = restored.settings.state_dir / "backups" / "b0"
        sigkill(stale.prm_pid())
        leader.replicate("small_reduced")
        sigkill(restored.prm_pid())
        for f in restored.settings.state_dir.glob("prm.db*"):
            f.unlink()
        done = restored.cli("restore", "--from", copy)
        assert done.returncode == 0, done
        with service_env():
            local.restart(cluster.root, restored.id, "prm")
        # R cannot fence while S is down (every other voter must answer): it only talks.
        wait_until(lambda: restored.status()["leader"] == leader.id, "R hears from the leader")
        with service_env():
            local.restart(cluster.root, stale.id, "prm")  # relays R's old stamp
        wait_until(lambda: restored.status()["voting"], "R votes again", timeout=CONVERGE_S)
        leader.replicate("small_reduced")
        cluster.converged(timeout=CONVERGE_S)
        for node in cluster.nodes:  # a rolling restart: every hello shown again
            with service_env():
                local.restart(cluster.root, node.id, "prm")
            cluster.leader()
            cluster.converged(timeout=CONVERGE_S)
        cluster.node(cluster.leader()).replicate("small_reduced")
        cluster.converged(timeout=CONVERGE_S)
        for node in cluster.nodes:
            assert not node.log_events("storage_demoted"), node.id
            refused = [str(e["reason"]) for e in node.log_events("peer_refused")]
            assert not [r for r in refused if "went back" in r], (node.id, refused)
        assert all(n.status()["voting"] for n in cluster.nodes)
