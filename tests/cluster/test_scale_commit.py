"""A leader whose commit is slow keeps leading (issue 12: heavy work never starves consensus).

The driver takes no Ready until the last one is committed, and a commit of megabytes of values on
a busy disk took 1.3 s under `paxmr bench storm`: every heartbeat waited for it and the followers
elected another leader. Node.beacon is the heartbeat sent meanwhile."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import pytest

from paxmr.bench.storm import elections
from paxmr.services.prm import db_path
from tests.support.local import running_cluster, small_tally

pytestmark = pytest.mark.integration

HOLD_S = 2.5  # over twice the election timeout (timing.election_max, 1 s)


def test_a_leader_whose_commit_waits_on_its_disk_still_heartbeats() -> None:
    with running_cluster() as cluster:
        leader = cluster.node(cluster.leader())
        name = small_tally(leader)
        nodes = [n.settings for n in cluster.nodes]
        before = elections(nodes)
        # Another writer holds the leader's database (as an operator's sqlite3 shell can): its
        # next commit waits for it (SQLite's busy timeout), a real slow commit.
        db = sqlite3.connect(db_path(leader.settings), isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        result: dict[str, Any] = {}
        client = threading.Thread(target=lambda: result.update(leader.replicate(name)))
        try:
            client.start()
            time.sleep(HOLD_S)
        finally:
            db.execute("ROLLBACK")
            db.close()
        client.join()
        assert result["position"] == 0, result
        # Before Node.beacon: both followers campaigned after at most 1 s of silence.
        assert elections(nodes) == before
        assert cluster.leader() == leader.id


def test_a_follower_whose_commit_waits_on_its_disk_does_not_campaign() -> None:
    """A follower whose accept's commit waits on its disk (another writer holds its database)
    goes on reading the leader's heartbeats: the commit, begun on its event loop, meets the
    lock and goes to a worker thread (StorageBusy, Prm._carry_out). From 2e2a33d to 396c3cb
    it waited on the loop, and this test saw the follower campaign unless it read its socket
    before its timers after such a stall (the sleep in Prm._carry_out, now for a slow disk)."""
    with running_cluster() as cluster:
        leader = cluster.node(cluster.leader())
        follower = next(n for n in cluster.nodes if n.id != leader.id)
        name = small_tally(leader)
        nodes = [n.settings for n in cluster.nodes]
        before = elections(nodes)
        leader.replicate(name)
        db = sqlite3.connect(db_path(follower.settings), isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        result: dict[str, Any] = {}
        client = threading.Thread(target=lambda: result.update(leader.replicate(name, "r2")))
        try:
            client.start()
            time.sleep(HOLD_S)
        finally:
            db.execute("ROLLBACK")
            db.close()
        client.join()
        assert result["position"] == 1, result
        time.sleep(1.0)  # the election timeout's longest: a campaign would have started
        assert elections(nodes) == before
        assert cluster.leader() == leader.id


def test_a_follower_whose_commit_on_its_loop_meets_a_lock_hands_it_to_a_worker() -> None:
    """A follower commits its accepts and applied entries on its event loop (Prm._commit_here):
    one that catches up while another writer holds its database does not wait there for the
    lock (SQLite's busy timeout): the commit goes to a worker thread (StorageBusy), its loop
    goes on reading the leader's heartbeats and answering, and it does not campaign. (Until
    this session such a commit waited on the loop, the heartbeats unread in the socket, and
    the sleep after a stalled commit in Prm._carry_out kept it from campaigning.)"""
    with running_cluster() as cluster:
        leader = cluster.node(cluster.leader())
        follower = next(n for n in cluster.nodes if n.id != leader.id)
        name = small_tally(leader)
        nodes = [n.settings for n in cluster.nodes]
        before = elections(nodes)
        log_end = follower.prm_log.stat().st_size
        leader.replicate(name, "a")
        follower.call("stop")
        leader.replicate(name, "b")  # chosen without it
        db = sqlite3.connect(db_path(follower.settings), isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            follower.call("resume")  # it catches up: its commits meet the lock
            time.sleep(HOLD_S)
            status = follower.call("status")  # answered while the lock is held
        finally:
            db.execute("ROLLBACK")
            db.close()
        cluster.converged()
        assert status["role"] == "follower", status
        late = follower.log_events("loop_late", after=log_end)
        assert not [e for e in late if e["seconds"] > HOLD_S / 2], late  # its loop never stood
        time.sleep(1.0)  # the election timeout's longest: a campaign would have started
        assert elections(nodes) == before
        assert cluster.leader() == leader.id
