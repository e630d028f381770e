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
    goes on reading the leader's heartbeats: the commit runs in a worker thread
    (Prm._commit_here). From 2e2a33d to 396c3cb it ran on the event loop, and this test saw
    the follower campaign unless it read its socket before its timers after such a stall (the
    sleep in Prm._carry_out, which now guards commits without an fsync only: not reached
    here)."""
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


def test_a_follower_whose_commit_on_its_loop_waits_on_a_lock_does_not_campaign() -> None:
    """A follower commits applied entries without an fsync on its event loop (Prm._commit_here):
    one that catches up while another writer holds its database waits there, the leader's
    heartbeats unread in the socket. Its peers' silence is judged only once it has read them
    (the sleep after a stalled commit, Prm._carry_out)."""
    with running_cluster() as cluster:
        leader = cluster.node(cluster.leader())
        follower = next(n for n in cluster.nodes if n.id != leader.id)
        name = small_tally(leader)
        nodes = [n.settings for n in cluster.nodes]
        before = elections(nodes)
        for attempt in range(12):
            log_end = follower.prm_log.stat().st_size
            # Its accept commits in a worker, which marks: for a second its next small
            # commit without an fsync runs on its loop (Storage.upkeep_due), if the steps
            # below are quick enough on this machine (else it goes to a worker: try again;
            # at load 9-11, beside other tests, 5 attempts were not always enough).
            leader.replicate(name, f"a{attempt}")
            follower.call("stop")
            leader.replicate(name, f"b{attempt}")  # chosen without it
            db = sqlite3.connect(db_path(follower.settings), isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            try:
                follower.call("resume")  # it catches up: a commit of applied entries
                time.sleep(HOLD_S)
            finally:
                db.execute("ROLLBACK")
                db.close()
            cluster.converged()
            late = follower.log_events("loop_late", after=log_end)
            if any(e["seconds"] > HOLD_S / 2 for e in late):
                break  # its loop stood still in that commit
        else:
            pytest.fail("the follower's catch-up never committed on its loop")
        time.sleep(1.0)  # the election timeout's longest: a campaign would have started
        assert elections(nodes) == before
        assert cluster.leader() == leader.id
