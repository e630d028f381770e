"""Cluster identity (issue 9): a node's storage records the cluster it founded and its members;
the member list of a running cluster does not change by editing configuration files."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import time
import tomllib
from pathlib import Path

import pytest

from paxmr import local
from paxmr.services import prm
from paxmr.storage import MARK_INTERVAL, mark_path
from tests.support.local import (
    UNREACHABLE,
    Cluster,
    Node,
    alive,
    running_cluster,
    service_env,
    sigkill,
    small_tally,
)
from tests.support.wait import CONVERGE_S, wait_until

pytestmark = pytest.mark.integration


def _add_member(config: Path, node_id: int, port: int) -> None:
    with config.open("a") as f:
        f.write(f'\n[[nodes]]\nid = {node_id}\nhost = "127.0.0.1"\nport = {port}\n')


def test_a_rolling_restart_with_another_member_list_changes_no_quorum(tmp_path: Path) -> None:
    """The review's first unsafe operation: members restarted one by one with a changed list
    would compute quorums from two lists. The log decides who votes: nodes added to the file
    are ignored (they are no members), and a node whose file lacks a member refuses to start,
    saying why; it starts again once the list is restored."""
    with running_cluster() as cluster:
        node = cluster.node(2)
        entries = node.replicate(small_tally(node))["position"] + 1
        founded = tomllib.loads(node.config.read_text())
        local.down(cluster.root)
        saved = tmp_path / "paxmr.toml"
        shutil.copy(node.config, saved)
        # Shrinking the file: refused.
        text = saved.read_text()
        keep = [n for n in founded["nodes"] if n["id"] != 3]
        assert len(keep) == 2
        shrunk = text.split("[[nodes]]")[0] + "".join(
            f'[[nodes]]\nid = {n["id"]}\nhost = "{n["host"]}"\nport = {n["port"]}\n' for n in keep
        )
        node.config.write_text(shrunk)
        result = node.cli("serve", "prm", timeout=30)
        assert result.returncode == 1
        assert "node 3 is a member of this cluster (epoch 0) but has no address" in result.stderr
        # Growing the file: the node starts, and the members are still the three.
        shutil.copy(saved, node.config)
        _add_member(node.config, 4, 1)
        _add_member(node.config, 5, 2)
        local.up(cluster.root, 3, cluster.mappers)
        cluster.converged(timeout=CONVERGE_S)
        members = node.cli_json("member", "list")
        assert [(m["node"], m["role"]) for m in members["members"]] == [
            (1, "voter"), (2, "voter"), (3, "voter")
        ]  # fmt: skip
        assert members["quorum"] == 2
        assert node.status()["entries"] == entries  # nothing lost on the way


def test_init_founds_only_when_told(tmp_path: Path) -> None:
    with running_cluster() as cluster:
        node = cluster.node(1)
        result = node.cli("init")
        assert result.returncode == 2
        assert "--found" in result.stderr
        result = node.cli("init", "--found")
        assert result.returncode == 1
        assert "already exists" in result.stderr


def test_a_cluster_that_lost_a_majority_of_disks_is_refounded_from_its_survivor(
    tmp_path: Path,
) -> None:
    """Two of three disks lost: the cluster cannot recover by itself (a wiped node needs a
    voting majority to fence). The operator re-founds it from the survivor, on every member;
    the new cluster holds the survivor's log, alike everywhere, and takes replicates."""
    with running_cluster() as cluster:
        node = cluster.node(1)
        for k in range(2):
            node.replicate(small_tally(node, f"t{k}_reduced"))
        cluster.converged(timeout=CONVERGE_S)
        before = node.status()
        local.down(cluster.root)
        survivor = tmp_path / "survivor.db"
        for n in cluster.nodes:
            db = n.settings.state_dir / "prm.db"
            if n.id == 1:
                shutil.copy(db, survivor)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        args = ("refound", "--from", survivor, "--cluster-id", "second")
        refused = node.cli(*args)
        assert refused.returncode == 2
        assert "--accept-data-loss" in refused.stderr
        for n in cluster.nodes:
            result = n.cli(*args, "--accept-data-loss")
            assert result.returncode == 0, result.stderr
            assert "WARNING" in result.stderr
        local.up(cluster.root, 3, cluster.mappers)
        digest = cluster.converged(timeout=CONVERGE_S)
        assert digest == before["digest"]
        assert node.status()["entries"] == before["entries"]
        cluster.node(3).replicate(small_tally(cluster.node(3), "after_reduced"))
        cluster.converged(timeout=CONVERGE_S)


def cluster_id(node: Node) -> str:
    with contextlib.closing(sqlite3.connect(node.settings.state_dir / "prm.db")) as db:
        (found,) = db.execute("SELECT cluster_id FROM identity").fetchone()
    return str(found)


def test_a_member_refounded_by_mistake_is_refused_by_its_peers() -> None:
    """`paxmr init --found` on a member of a running cluster (its disk replaced) would give it
    storage that votes with nothing it promised. init asks the peers first and refuses, naming
    the cluster they run. Founded anyway (its peers unreachable at the time, here in-process),
    it gets a new cluster id: its peers refuse its connections, saying which clusters differ,
    and it refuses theirs, so it never joins the old cluster's quorums, which go on."""
    with running_cluster() as cluster:
        one, three = cluster.node(1), cluster.node(3)
        one.replicate(small_tally(one))
        cluster.converged(timeout=CONVERGE_S)
        sigkill(three.prm_pid())
        db = three.settings.state_dir / "prm.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        # prm.db gone but its high-water mark still there: init refuses without asking anyone.
        result = three.cli("init", "--found")
        assert result.returncode == 1, result.stderr
        assert "this node held a storage of a cluster" in result.stderr
        mark_path(db).unlink()  # the disk replaced: the mark went with it
        real = cluster_id(one)
        for args in (("--cluster-id", "mistake"), (), ("--cluster-id", real)):
            result = three.cli("init", "--found", *args)
            assert result.returncode == 1, result.stderr
            assert "a configured peer runs a cluster already: node 1" in result.stderr
            assert "with 1 entries" in result.stderr
            assert not db.exists()
        prm.initialize(three.settings, "mistake")
        with service_env():
            local.restart(cluster.root, 3, "prm")

        def refused() -> list[dict[str, object]]:
            return [
                e for e in one.log_events("peer_refused") if "cluster mistake" in str(e["reason"])
            ]

        wait_until(refused, "node 1 refuses the re-founded node 3", timeout=CONVERGE_S)
        before = one.status()["entries"]
        one.replicate(small_tally(one, "after_reduced"))
        cluster.converged(timeout=CONVERGE_S, nodes=[one, cluster.node(2)])
        assert one.status()["entries"] == before + 1
        assert three.status()["entries"] == 0  # it learned nothing of the old cluster's log


def test_founding_members_started_one_by_one_found_one_cluster(tmp_path: Path) -> None:
    """The check init makes does not get in the way of founding: a founding member already
    running (same cluster id, empty log) does not stop the next one's init."""
    with running_cluster() as cluster:
        root = cluster.root
        local.down(root)
        for n in cluster.nodes:  # new machines: no storage, no high-water mark
            db = n.settings.state_dir / "prm.db"
            for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), mark_path(db)):
                path.unlink(missing_ok=True)
        first, second = cluster.node(1), cluster.node(2)
        assert first.cli("init", "--found", "--cluster-id", "fresh").returncode == 0
        with service_env():
            local.up(root, 3, cluster.mappers)
        # Node 1 runs (cluster "fresh", nothing in its log); nodes 2 and 3 have no storage yet,
        # so they started as joining nodes without an identity.
        assert cluster_id(first) == "fresh"
        assert prm.peers_in_a_cluster(second.settings, "fresh") == []
        assert prm.peers_in_a_cluster(second.settings, "other") == [
            f"node 1 ({a.host}:{a.port}) belongs to cluster fresh with 0 entries"
            for a in second.settings.nodes
            if a.id == 1
        ]


def test_a_member_refounded_by_mistake_is_refused_by_a_peer_that_lost_its_disk() -> None:
    """Node 2 lost its disk and came back as it must, without `init`: its new storage learns
    the cluster id from its peers before it talks to them (prm.learn_cluster), and it votes
    again once fenced. Then node 3 is re-founded by mistake (storage that votes with nothing
    it promised). Node 1 refuses node 3; so does node 2. If it did not, node 3
    catches up from node 2 and campaigns with it: node 3's own forgotten promises plus node 2's
    make a quorum of the old cluster (a value chosen by nodes 1 and 3 before, which node 2 has
    not heard of, can be chosen over)."""
    with running_cluster() as cluster:
        one, two, three = cluster.node(1), cluster.node(2), cluster.node(3)
        one.replicate(small_tally(one))
        cluster.converged(timeout=CONVERGE_S)
        for node, found in ((two, False), (three, True)):
            sigkill(node.prm_pid())
            db = node.settings.state_dir / "prm.db"
            for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), mark_path(db)):
                path.unlink(missing_ok=True)  # the disk replaced
            if found:  # init refuses while node 1 answers: founded while the peers were down
                prm.initialize(node.settings, "mistake")
            with service_env():
                local.restart(cluster.root, node.id, "prm")
            if not found:
                cluster.converged(timeout=CONVERGE_S)
                wait_until(lambda: two.status()["voting"], "node 2 votes again", timeout=CONVERGE_S)

        def refused_by_two() -> bool:
            return any(
                "cluster mistake" in str(e["reason"]) for e in two.log_events("peer_refused")
            )

        wait_until(
            lambda: refused_by_two() or three.status()["entries"] > 0,
            "node 2 refuses node 3, or node 3 learns the old cluster's log from node 2",
            timeout=CONVERGE_S,
        )
        assert three.status()["entries"] == 0  # it learned nothing of the old cluster's log
        assert refused_by_two()


def test_an_old_prm_db_put_back_rejoins_fenced_and_says_why() -> None:
    """The third unsafe operation of issue 9: node 2's prm.db replaced by an older raw copy
    (as a restore from a file backup would), its PRM killed first. Voting with it would break
    promises and accepts it made since. The PRM opens it, sees from the high-water mark that
    it went back in time, logs why, and starts it as a replica that lost its storage: it
    fences, catches up and votes again, and the logs agree."""
    with running_cluster() as cluster:
        one, two = cluster.node(1), cluster.node(2)
        one.replicate(small_tally(one, "t0_reduced"))
        cluster.converged(timeout=CONVERGE_S)
        db = two.settings.state_dir / "prm.db"
        old = two.settings.state_dir.parent / "old-prm.db"
        with (
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as src,
            contextlib.closing(sqlite3.connect(old)) as dst,
        ):
            src.backup(dst)
        one.replicate(small_tally(one, "t1_reduced"))
        time.sleep(MARK_INTERVAL * 1.5)  # the next commit brings the mark up to date
        one.replicate(small_tally(one, "t2_reduced"))
        cluster.converged(timeout=CONVERGE_S)
        sigkill(two.prm_pid())
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            path.unlink(missing_ok=True)
        shutil.copy(old, db)
        with service_env():
            local.restart(cluster.root, 2, "prm")

        def demoted() -> list[dict[str, object]]:
            return two.log_events("storage_demoted")

        (event,) = wait_until(demoted, "node 2 says its storage went back", timeout=CONVERGE_S)
        assert "prm.db went back in time" in str(event["reason"])
        wait_until(lambda: two.status()["voting"], "node 2 votes again", timeout=CONVERGE_S)
        one.replicate(small_tally(one, "t3_reduced"))
        cluster.converged(timeout=CONVERGE_S)


def _snapshot(node: Node, to: Path) -> None:
    """A VM snapshot of `node`'s state directory: its PRM frozen (SIGSTOP), every file copied,
    the mark included, so nothing in the directory shows it is old."""
    pid = node.prm_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        shutil.copytree(node.settings.state_dir, to, ignore=shutil.ignore_patterns("*.sock"))
    finally:
        os.kill(pid, signal.SIGCONT)


def _revert(node: Node, snapshot: Path) -> None:
    """The snapshot put back over `node`'s state directory, its PRM killed first."""
    sigkill(node.prm_pid())
    state = node.settings.state_dir
    for path in state.glob("prm.*"):
        path.unlink()
    shutil.copytree(snapshot, state, dirs_exist_ok=True)


def test_a_reverted_vm_snapshot_is_caught_by_the_peers_and_rejoins_fenced() -> None:
    """The third unsafe operation of issue 9, as a VM snapshot reverts it: node 2's whole
    state directory (database, -wal, high-water mark) put back as it was before it voted on
    two more entries, so its own mark agrees with it. Its peers saw it further: asked when it
    starts (prm.compare_with_peers), node 1 or 3 shows it the stamp of its last vote, and it starts
    as a replica that lost its storage, in the same process: it fences, votes again, and
    the logs agree."""
    with running_cluster() as cluster:
        one, two = cluster.node(1), cluster.node(2)
        one.replicate(small_tally(one, "t0_reduced"))
        cluster.converged(timeout=CONVERGE_S)
        snapshot = two.settings.state_dir.parent / "snapshot"
        _snapshot(two, snapshot)
        one.replicate(small_tally(one, "t1_reduced"))
        one.replicate(small_tally(one, "t2_reduced"))
        cluster.converged(timeout=CONVERGE_S)
        _revert(two, snapshot)
        with service_env():
            local.restart(cluster.root, 2, "prm")
        pid = two.prm_pid()

        def demoted() -> list[dict[str, object]]:
            return two.log_events("storage_demoted")

        (event,) = wait_until(demoted, "node 2 says its storage went back", timeout=CONVERGE_S)
        assert "saw it hold" in str(event["reason"]), event
        wait_until(lambda: two.status()["voting"], "node 2 votes again", timeout=CONVERGE_S)
        one.replicate(small_tally(one, "t3_reduced"))
        cluster.converged(timeout=CONVERGE_S)
        assert two.prm_pid() == pid  # caught before the core was built: the PRM went on
        assert alive(pid)


def _writes(node: Node) -> int:
    """The write count of `node`'s storage (read beside its PRM)."""
    db = node.settings.state_dir / "prm.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        (writes,) = conn.execute("SELECT value FROM meta WHERE key = 'writes'").fetchone()
    return int(writes)


def _seen(node: Node, peer: int) -> int:
    """How many writes `node` (its PRM down) last saw `peer`'s storage hold."""
    db = node.settings.state_dir / "prm.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        (writes,) = conn.execute("SELECT writes FROM seen WHERE peer = ?", (peer,)).fetchone()
    return int(writes)


# A node with these timers does not campaign alone for a minute: no write of its own meanwhile.
QUIET = {"PAXMR_TIMING__ELECTION_MIN": "60", "PAXMR_TIMING__ELECTION_MAX": "60"}


def _reverted_alone(cluster: Cluster, env: dict[str, str] | None = None) -> tuple[int, int]:
    """Node 2 reverted to a snapshot from before it voted on three entries, then started while
    nodes 1 and 3 are down (with `env`): returns its PRM's pid and the write count node 1 saw
    it hold."""
    one, two, three = cluster.node(1), cluster.node(2), cluster.node(3)
    one.replicate(small_tally(one, "t0_reduced"))
    cluster.converged(timeout=CONVERGE_S)
    snapshot = two.settings.state_dir.parent / "snapshot"
    _snapshot(two, snapshot)
    one.replicate(small_tally(one, "t1_reduced"))
    one.replicate(small_tally(one, "t2_reduced"))
    cluster.converged(timeout=CONVERGE_S)
    sigkill(three.prm_pid())
    one.replicate(small_tally(one, "t3_reduced"))  # node 2's vote is needed: it saw it
    sigkill(one.prm_pid())
    _revert(two, snapshot)
    seen = _seen(one, 2)
    assert _writes(two) < seen
    with service_env(env):
        local.restart(cluster.root, 2, "prm")
    assert not two.log_events("storage_demoted")  # nobody could tell it yet
    return two.prm_pid(), seen  # restart returns once it serves


def test_a_reverted_vm_snapshot_is_caught_when_its_peers_come_back() -> None:
    """As above, but nodes 1 and 3 are down when node 2 starts, so no one can tell it. When
    node 1 comes back, its hello shows node 2 the stamp it saw: node 2 makes its storage
    forgetful and its PRM ends (systemd starts it again), and node 1 refuses node 2's
    connection meanwhile. Started again, node 2 fences, votes, and the logs agree. Node 2
    does not campaign while it is alone (QUIET), so it writes nothing meanwhile: the next
    test is what happens when it does."""
    with running_cluster() as cluster:
        one, two = cluster.node(1), cluster.node(2)
        pid, seen = _reverted_alone(cluster, QUIET)
        assert _writes(two) < seen  # the condition this test is about
        with service_env():
            local.restart(cluster.root, 1, "prm")
        (event,) = wait_until(
            lambda: two.log_events("storage_demoted"),
            "node 2 hears from node 1 that its storage went back",
            timeout=CONVERGE_S,
        )
        assert "node 1 saw it hold" in str(event["reason"]), event
        wait_until(lambda: not alive(pid), "node 2's PRM ends", timeout=CONVERGE_S)
        with service_env():
            local.restart(cluster.root, 2, "prm")
            local.restart(cluster.root, 3, "prm")
        wait_until(lambda: two.status()["voting"], "node 2 votes again", timeout=CONVERGE_S)
        one.replicate(small_tally(one, "t4_reduced"))
        cluster.converged(timeout=CONVERGE_S)


def test_a_reverted_vm_snapshot_that_campaigned_alone_is_caught_when_its_peers_come_back() -> None:
    """As above, with node 2 campaigning while alone (the default timers): each campaign is a
    write (its used round), so its count climbs back past what it forgot. Node 1 saw it in
    the run before the revert (a session, stamps.went_back), which node 2's storage records
    as ending at the snapshot's count: node 1's hello shows it went back, however many
    writes it made since."""
    with running_cluster() as cluster:
        one, two = cluster.node(1), cluster.node(2)
        _, seen = _reverted_alone(cluster)
        wait_until(lambda: _writes(two) >= seen, "node 2 writes as many as it forgot")
        with service_env():
            local.restart(cluster.root, 1, "prm")

        def settled() -> bool:
            if two.log_events("storage_demoted"):
                return True
            with contextlib.suppress(*UNREACHABLE):
                leader = one.status()["leader"]
                return leader is not None and two.status()["leader"] == leader
            return False

        wait_until(settled, "node 2 demoted, or nodes 1 and 2 agree on a leader")
        assert two.log_events("storage_demoted"), "node 2 votes with a reverted storage"


def test_a_reverted_vm_snapshot_is_caught_by_a_peer_that_did_not_count_its_votes() -> None:
    """Only the leader received node F's votes (Accepted), and it is down when F, reverted,
    starts. The leader relayed what it saw of F to the other follower with its messages
    (transport.Relay), so that follower shows F its stamp at start: F is demoted before it
    votes, though no peer it reaches ever got a vote from it since the snapshot."""
    with running_cluster() as cluster:
        leader = cluster.node(cluster.leader())
        follower, other = (n for n in cluster.nodes if n.id != leader.id)
        leader.replicate(small_tally(leader, "t0_reduced"))
        cluster.converged(timeout=CONVERGE_S)
        snapshot = follower.settings.state_dir.parent / "snapshot"
        _snapshot(follower, snapshot)
        leader.replicate(small_tally(leader, "t1_reduced"))
        leader.replicate(small_tally(leader, "t2_reduced"))
        cluster.converged(timeout=CONVERGE_S)
        sigkill(leader.prm_pid())
        _revert(follower, snapshot)
        with service_env():
            local.restart(cluster.root, follower.id, "prm")
        (event,) = follower.log_events("storage_demoted")  # at start, before it votes
        assert f"node {other.id} saw it hold" in str(event["reason"]), event
        assert not follower.status()["voting"]
        with service_env():
            local.restart(cluster.root, leader.id, "prm")
        wait_until(lambda: follower.status()["voting"], "F votes again", timeout=CONVERGE_S)
        leader.replicate(small_tally(leader, "t3_reduced"))
        cluster.converged(timeout=CONVERGE_S)


def test_a_vm_snapshot_reverted_twice_is_caught_twice() -> None:
    """README: a reverted VM snapshot is caught by the peers. Revert node 2 to the same
    snapshot a second time: the first revert demoted it (new nonce), so the snapshot's nonce
    is one its peers saw it replace (storage.py, `retired`)."""
    with running_cluster() as cluster:
        one, two = cluster.node(1), cluster.node(2)
        one.replicate(small_tally(one, "t0_reduced"))
        cluster.converged(timeout=CONVERGE_S)
        snapshot = two.settings.state_dir.parent / "snapshot"
        _snapshot(two, snapshot)
        one.replicate(small_tally(one, "t1_reduced"))
        one.replicate(small_tally(one, "t2_reduced"))
        cluster.converged(timeout=CONVERGE_S)
        _revert(two, snapshot)
        with service_env():
            local.restart(cluster.root, 2, "prm")
        wait_until(lambda: two.log_events("storage_demoted"), "first revert caught", timeout=10)
        wait_until(lambda: two.status()["voting"], "node 2 votes again", timeout=CONVERGE_S)
        one.replicate(small_tally(one, "t3_reduced"))
        cluster.converged(timeout=CONVERGE_S)
        _revert(two, snapshot)  # the same snapshot again: t1..t3 forgotten, voting, old nonce
        with service_env():
            local.restart(cluster.root, 2, "prm")
        one.replicate(small_tally(one, "t4_reduced"))
        events = two.log_events("storage_demoted")
        voting = two.status()["voting"]
        assert len(events) == 2, f"second revert not caught (node 2 voting: {voting}): {events}"
