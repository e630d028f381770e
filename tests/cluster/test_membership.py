"""Membership changes on a real local cluster (issue 9): a node added through the log while
replicates land, the leader removed, and the refusals an operator meets."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from paxmr import local
from paxmr.control import RemoteError
from tests.support.local import (
    Cluster,
    Node,
    Stream,
    all_acked_everywhere,
    running_cluster,
    service_env,
    small_tally,
)
from tests.support.wait import CONVERGE_S, wait_until

pytestmark = pytest.mark.integration


def _new_node(cluster: Cluster) -> tuple[Node, str]:
    """A fresh node from `paxmr local add` (started without `paxmr init`), no member yet."""
    with service_env():
        node_id, address = local.add(cluster.root)
    return Node(node_id, cluster.root, cluster.nodes[0].env), address


def _stable_leader(cluster: Cluster) -> int | None:
    first = cluster.leader()
    time.sleep(1.0)
    return (
        first
        if cluster.leader() == first and all(n.status()["voting"] for n in cluster.nodes)
        else None
    )


def _roles(node: Node) -> dict[int, str]:
    return {m["node"]: m["role"] for m in node.cli_json("member", "list")["members"]}


def test_add_a_node_then_remove_the_leader_while_replicates_land() -> None:
    with running_cluster() as cluster:
        new, address = _new_node(cluster)
        grown = Cluster(cluster.root, [*cluster.nodes, new], cluster.mappers)
        with Stream([cluster.node(1), cluster.node(2)], clients_per_node=1) as stream:
            stream.wait_for(5)
            # Asked on a follower: the change goes through the leader like a replicate.
            leader = cluster.leader()
            asked = next(n for n in cluster.nodes if n.id != leader)
            added = asked.cli_json("member", "add", "4", address, "--wait", "30")
            assert added["role"] == "voter", added
            assert _roles(asked) == {1: "voter", 2: "voter", 3: "voter", 4: "voter"}
            stream.wait_for(5)
            # The new node fences once it votes (it joined without state), which may move
            # the leadership: wait until it stays put.
            leader = wait_until(lambda: _stable_leader(grown), "a leader that stays")
            rest = [n for n in grown.nodes if n.id != leader]
            removed = rest[0].cli_json("member", "remove", str(leader))  # asked elsewhere
            assert removed["removed"] is True
            stream.wait_for(5)
        assert set(_roles(rest[0])) == {1, 2, 3, 4} - {leader}
        assert Cluster(grown.root, rest, grown.mappers).leader() != leader
        grown.converged(timeout=CONVERGE_S, nodes=rest)
        landed = {e["request_id"] for e in rest[0].cli_json("print")["entries"]}
        # Nothing acknowledged was lost, through the removed leader's node included.
        assert set(stream.acked) <= landed
        assert new.status()["voting"] is True  # the new node votes by now


def test_refusals_are_clear() -> None:
    with running_cluster() as cluster:
        node = cluster.node(1)
        twice = node.cli("member", "add", "2", "127.0.0.1:7000")
        assert twice.returncode == 1
        assert "node 2 is a member already" in twice.stderr
        bad = node.cli("member", "add", "9", "nowhere")
        assert bad.returncode == 1
        assert "is not HOST:PORT" in bad.stderr
        absent = node.cli("member", "remove", "9")
        assert absent.returncode == 1
        assert "node 9 is not a member" in absent.stderr
        # With a follower stopped, removing the other would leave the leader and the stopped
        # one: one of two voters answers, no quorum.
        leader = cluster.node(cluster.leader())
        down, other = [n for n in cluster.nodes if n is not leader]
        down.call("stop")
        wait_until(lambda: not leader.status()["peers"][str(down.id)]["up"], "the leader misses it")
        refused = other.cli("member", "remove", str(other.id))  # asked on a follower
        assert refused.returncode == 5, refused.stderr
        assert "1 can vote now" in refused.stderr
        assert "fewer than the 2 a quorum needs" in refused.stderr
        assert _roles(node) == {1: "voter", 2: "voter", 3: "voter"}  # nothing changed
        down.call("resume")


def test_members_need_addresses_only_from_the_log(tmp_path: Path) -> None:
    """A member added with an address is reachable by nodes whose files never named it."""
    with running_cluster() as cluster:
        new, address = _new_node(cluster)
        first = cluster.node(1)
        first.replicate(small_tally(first))
        added = cluster.node(2).cli_json("member", "add", "4", address, "--wait", "30")
        assert added["role"] == "voter"
        assert "id = 4" not in first.config.read_text()
        cluster.converged(timeout=CONVERGE_S, nodes=[*cluster.nodes, new])
        assert new.status()["entries"] == 1


def test_a_removed_node_still_running_on_its_old_disk_is_added_back() -> None:
    """An operator removes node 3, which keeps running on its disk (in the epoch it left), then
    adds it back under the same id. It joins the new epoch as a learner, is promoted, and the
    log stays one log; replicates land throughout and none acknowledged is lost."""
    with running_cluster() as cluster:
        one, three = cluster.node(1), cluster.node(3)
        with Stream([one], clients_per_node=1) as stream:
            stream.wait_for(3)
            address = next(m for m in one.cli_json("member", "list")["members"] if m["node"] == 3)
            removed = one.cli_json("member", "remove", "3")
            assert removed["removed"] is True
            assert _roles(one) == {1: "voter", 2: "voter"}
            stream.wait_for(3)
            added = one.cli_json("member", "add", "3", address["address"], "--wait", "30")
            assert added["role"] == "voter", added
            stream.wait_for(3)
        assert _roles(three) == {1: "voter", 2: "voter", 3: "voter"}
        cluster.converged(timeout=CONVERGE_S)
        all_acked_everywhere(cluster, stream.acked)


def test_two_changes_asked_at_once_on_two_nodes_one_takes_effect_the_other_is_told() -> None:
    """Two operators add a node each at the same moment, one through node 1 and one through
    node 2. Each change names the whole member set it expects, so the second one chosen is
    stale: it changes nothing, and its operator is told `conflict` and to look and retry; the
    retry then takes effect. (Asked within a millisecond of each other, the two changes met in
    every run here; should the first take effect before the second is asked, both are fine.)"""
    with running_cluster() as cluster:
        new = [_new_node(cluster), _new_node(cluster)]
        asked = [cluster.node(1), cluster.node(2)]
        outcomes: dict[int, str] = {}
        barrier = threading.Barrier(2)

        def add(k: int) -> None:
            node, address = new[k]
            args = {"node": node.id, "address": address, "wait": 30}
            barrier.wait()
            try:
                asked[k].call("member_add", args, timeout=90)
                outcomes[node.id] = "ok"
            except RemoteError as exc:
                outcomes[node.id] = f"{exc.code}: {exc}"

        threads = [threading.Thread(target=add, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        if list(outcomes.values()) == ["ok", "ok"]:
            # Rare on a loaded machine: the first took effect before the second was asked.
            assert set(_roles(cluster.node(1))) == {1, 2, 3, 4, 5}
            return
        assert min(outcomes.values()).startswith("conflict: another membership change"), outcomes
        (loser,) = [k for k, v in outcomes.items() if v != "ok"]
        assert loser not in _roles(cluster.node(1))  # the stale change changed nothing
        address = next(a for n, a in new if n.id == loser)
        retried = cluster.node(1).cli_json("member", "add", str(loser), address, "--wait", "30")
        assert retried["role"] == "voter", retried
        assert set(_roles(cluster.node(1))) == {1, 2, 3, 4, 5}
