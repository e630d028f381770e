"""What an operator sees on a real 3-node cluster: health exit codes, honest peer status, election
traces in the logs and the metrics, stale-read warnings and consistent reads (issue 13).

Every check goes through the real ``paxmr`` command or the PRM's real sockets and HTTP endpoint.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import sqlite3
import subprocess
import urllib.request
from typing import Any

import pytest

from paxmr import local
from paxmr.services.prm import db_path
from tests.support import metrics
from tests.support.local import Cluster, Node, service_env, sigkill
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

FILE = "small_reduced"


def _follower(cluster: Cluster) -> Node:
    return cluster.node(cluster.leader() % 3 + 1)


def _metrics(node: Node) -> dict[str, float]:
    """The PRM's Prometheus endpoint, scraped over loopback HTTP."""
    port = node.settings.metrics_port
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return metrics.parse(r.read().decode())


# --- health ------------------------------------------------------------------------------------


def test_health_and_status_exit_0_on_a_healthy_cluster(healthy: Cluster) -> None:
    for n in healthy.nodes:
        for cmd in ("health", "status"):
            done = n.cli(cmd)
            assert done.returncode == 0, (n.id, cmd, done.stdout, done.stderr)
        report = json.loads(n.cli("-o", "json", "health").stdout)
        assert report["healthy"] is True
        assert report["problems"] == []


def test_health_of_a_stopped_node_exits_5(healthy: Cluster) -> None:
    node = _follower(healthy)
    assert node.cli("stop").returncode == 0
    try:
        for cmd in ("health", "status"):
            done = node.cli(cmd)
            assert done.returncode == 5, (cmd, done.stdout, done.stderr)
            assert "stopped" in done.stdout
    finally:
        node.cli("resume")
    wait_until(lambda: node.cli("health").returncode == 0, "the resumed node healthy again")


def test_health_with_a_dead_prm_exits_3(healthy: Cluster) -> None:
    node = _follower(healthy)
    sigkill(node.prm_pid())
    done = node.cli("health")
    assert done.returncode == 3, done
    assert "prm down" in done.stdout
    status = node.cli("-o", "json", "status")
    assert status.returncode == 3
    assert json.loads(status.stdout)["services"]["prm"] == "down"
    cluster = node.cli("health", "--cluster")  # the PRM that would ask the others is down
    assert cluster.returncode == 3, cluster


def test_health_with_a_service_that_does_not_answer_exits_1(healthy: Cluster) -> None:
    """A frozen reducer (SIGSTOP) keeps its socket: the connection is taken, no answer comes."""
    node = _follower(healthy)
    [pid] = [
        s.pid for s in local.load_state(healthy.root) if (s.node, s.name) == (node.id, "reducer")
    ]
    os.kill(pid, signal.SIGSTOP)
    try:
        done = node.cli("health")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert done.returncode == 1, done
    assert "reducer not answering" in done.stdout


def test_health_without_quorum_exits_5_and_names_the_reason(healthy: Cluster) -> None:
    """Two of three PRMs killed: the survivor's services all answer, yet it is not healthy."""
    leader = healthy.leader()
    survivor = healthy.node(leader % 3 + 1)
    for n in healthy.nodes:
        if n is not survivor:
            sigkill(n.prm_pid())
    wait_until(lambda: survivor.cli("health").returncode == 5, "health exit 5 on the lone survivor")
    report = json.loads(survivor.cli("-o", "json", "health").stdout)
    assert report["services"]["prm"] == "up"
    assert any("no leader" in p for p in report["problems"]), report["problems"]
    assert any("no quorum" in p for p in report["problems"]), report["problems"]
    # Nor can it serve a consistent read: a clear error within the replicate timeout.
    strict = survivor.cli("total", "0", "--consistent")
    assert strict.returncode == 5, strict
    assert "no consistent read within" in strict.stderr
    assert "no quorum" in strict.stderr


# --- the cluster through one node's PRM ---------------------------------------------------------


def test_status_cluster_asked_of_a_follower_shows_every_member_as_it_sees_itself(
    healthy: Cluster,
) -> None:
    leader = healthy.leader()
    node = _follower(healthy)
    node.replicate(FILE)
    digest = healthy.converged()
    done = node.cli("-o", "json", "status", "--cluster")
    assert done.returncode == 0, done
    report = json.loads(done.stdout)
    assert report["asked_by"] == node.id
    rows = {m["node"]: m for m in report["members"]}
    assert sorted(rows) == [1, 2, 3]
    views = {n: m["replica"] for n, m in rows.items()}
    # Each row is the member's own view: only the leader says it leads.
    assert {n for n, v in views.items() if v["role"] == "leader"} == {leader}, views
    assert {v["leader"] for v in views.values()} == {leader}
    assert {v["digest"] for v in views.values()} == {digest}
    assert all(v["problems"] == [] and v["version"] for v in views.values())
    assert all(rows[n]["address"] == f"127.0.0.1:{healthy.node(n).settings.me.port}" for n in rows)
    text = node.cli("status", "--cluster").stdout
    for n in rows:
        assert re.search(rf"^\s*{n}\s+127\.0\.0\.1:\d+\s+voter\s", text, re.MULTILINE), text
    assert node.cli("health", "--cluster").returncode == 0


def test_status_cluster_shows_every_column_and_how_far_a_stopped_member_is_behind(
    healthy: Cluster,
) -> None:
    """A stopped member still answers the operator's question (it drops only the protocol's
    messages): its row says STOPPED and how many slots it lacks."""
    leader = healthy.node(healthy.leader())
    stopped = _follower(healthy)
    asker = next(n for n in healthy.nodes if n not in (leader, stopped))
    assert stopped.cli("stop").returncode == 0
    try:
        for _ in range(2):
            leader.replicate(FILE)
        healthy.converged(nodes=[leader, asker])
        own = {n.id: n.status() for n in healthy.nodes}
        done = asker.cli("-o", "json", "status", "--cluster")
        text = asker.cli("status", "--cluster").stdout
    finally:
        stopped.cli("resume")
    assert done.returncode == 5, done  # a stopped member is not healthy
    rows = {m["node"]: m for m in json.loads(done.stdout)["members"]}
    longest = own[leader.id]["slots"]
    for n, row in rows.items():
        view = row["replica"]
        assert view["ballot"] == own[n]["ballot"], (n, view)
        assert row["applied"] == view["slots"] == own[n]["slots"], (n, row)
        assert row["behind"] == longest - own[n]["slots"], (n, row)
        assert view["version"] == importlib.metadata.version("paxmr")
        assert row["heard_s_ago"] is not None
    assert rows[stopped.id]["behind"] >= 2
    assert rows[stopped.id]["replica"]["stopped"] is True
    size = {n: row["replica"]["log_bytes"] for n, row in rows.items()}
    assert size[asker.id] == size[leader.id] > size[stopped.id]  # two entries more
    header, *lines = text.splitlines()
    columns = re.split(r"\s{2,}", header.strip())
    assert columns == ["node", "address", "member", "role", "leader", "ballot", "applied",
                       "entries", "log bytes", "behind", "digest", "heard", "version",
                       "health"]  # fmt: skip
    table = {int(c[0]): dict(zip(columns, c, strict=True))
             for c in (re.split(r"\s{2,}", line.strip()) for line in lines[:3])}  # fmt: skip
    assert table[stopped.id]["role"] == "STOPPED"
    assert table[stopped.id]["behind"] == f"{rows[stopped.id]['behind']:,}"
    assert table[leader.id]["log bytes"] == f"{rows[leader.id]['replica']['log_bytes']:,}"
    assert table[leader.id]["ballot"] == "{}.{}".format(*own[leader.id]["ballot"])


def test_status_and_health_cluster_name_a_member_that_does_not_answer(healthy: Cluster) -> None:
    leader = healthy.node(healthy.leader())
    dead = _follower(healthy)
    sigkill(dead.prm_pid())
    for asked in (leader, next(n for n in healthy.nodes if n not in (leader, dead))):
        done = asked.cli("-o", "json", "status", "--cluster")
        assert done.returncode == 5, done
        rows = {m["node"]: m for m in json.loads(done.stdout)["members"]}
        assert rows[dead.id]["replica"] is None
        assert "no answer" in rows[dead.id]["error"]
        assert all(rows[n]["replica"] is not None for n in rows if n != dead.id)
        text = asked.cli("status", "--cluster", "--timeout", "2")
        assert text.returncode == 5
        assert f"did not answer: node {dead.id}" in text.stdout
        health = asked.cli("health", "--cluster", "--timeout", "2")
        assert health.returncode == 5
        assert f"node {dead.id}: did not answer" in health.stdout


# --- peers -------------------------------------------------------------------------------------


def test_a_frozen_peer_shows_down_although_its_tcp_connection_stays_up(healthy: Cluster) -> None:
    """SIGSTOP keeps the follower's sockets open: TCP-connected, but it no longer answers."""
    leader = healthy.node(healthy.leader())
    frozen = _follower(healthy)
    peer = str(frozen.id)
    pid = frozen.prm_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: not leader.status()["peers"][peer]["up"],
            "the frozen peer shown down",
            timeout=5,
        )
        assert leader.status()["peers"][peer]["connected"] is True
        text = leader.cli("status").stdout
        assert re.search(rf"\b{peer}:DOWN \(silent [0-9.]+ s, tcp connected\)", text), text
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: leader.status()["peers"][peer]["up"], "the thawed peer shown up again")


# --- elections leave a trace ---------------------------------------------------------------------


def test_a_leader_change_is_logged_and_counted(healthy: Cluster) -> None:
    old = healthy.leader()
    survivors = [n for n in healthy.nodes if n.id != old]
    before = {n.id: _metrics(n) for n in survivors}
    for n in survivors:
        assert before[n.id]["paxmr_has_leader"] == 1
    logged = {n.id: len(n.log_events("leader_changed")) for n in survivors}
    sigkill(healthy.node(old).prm_pid())
    new = healthy.leader(exclude=old)
    for n in survivors:
        events = n.log_events("leader_changed")[logged[n.id] :]
        assert events, f"node {n.id} logged no leader change"
        last = events[-1]
        assert last["leader"] == new
        assert last["level"] == "warning"
        assert last["ballot"][1] == new  # the new leader's ballot
        after = _metrics(n)
        changes = "paxmr_leader_changes_seen_total"
        assert after[changes] > before[n.id][changes], (n.id, after[changes])
        assert after["paxmr_has_leader"] == 1
        assert after["paxmr_ballot_round"] > before[n.id]["paxmr_ballot_round"]
    assert _metrics(healthy.node(new))["paxmr_is_leader"] == 1


def test_a_leader_that_loses_its_quorum_logs_peers_down_a_step_down_and_an_election(
    healthy: Cluster,
) -> None:
    """Both followers' PRMs killed: the leader hears nobody, steps down and campaigns in vain;
    its peers coming back show as peer_up. Every step is a log line, and the metrics agree."""
    lone = healthy.node(healthy.leader())
    peers = sorted(n.id for n in healthy.nodes if n is not lone)
    start = lone.prm_log.stat().st_size
    for p in peers:
        sigkill(healthy.node(p).prm_pid())

    def roles() -> list[dict[str, object]]:
        return lone.log_events("role_changed", after=start)

    wait_until(lambda: any(e["new_role"] == "candidate" for e in roles()), "an election logged")
    down = lone.log_events("peer_down", after=start)
    assert sorted(e["peer"] for e in down) == peers, down
    assert all(e["level"] == "warning" for e in down)
    assert roles()[0]["old_role"] == "leader", roles()  # the step-down comes first
    assert any(e["leader"] is None for e in lone.log_events("leader_changed", after=start))
    alone = _metrics(lone)
    assert (alone["paxmr_has_leader"], alone["paxmr_is_leader"]) == (0, 0)
    assert alone["paxmr_peers_heard"] == 0
    healthy.heal()
    wait_until(
        lambda: sorted(e["peer"] for e in lone.log_events("peer_up", after=start)) == peers,
        "both peers logged up again",
    )
    healthy.leader()
    assert _metrics(lone)["paxmr_peers_heard"] >= 1


def test_a_resumed_node_logs_its_catch_up(healthy: Cluster) -> None:
    node = _follower(healthy)
    others = [n for n in healthy.nodes if n is not node]
    start = node.prm_log.stat().st_size
    assert node.cli("stop").returncode == 0
    try:
        missed_from = node.status()["slots"]
        for _ in range(2):
            others[0].replicate(FILE)
        healthy.converged(nodes=others)
        target = others[0].status()["slots"]
    finally:
        assert node.cli("resume").returncode == 0
    finished = wait_until(
        lambda: node.log_events("catchup_finished", after=start), "the catch-up logged as done"
    )
    [started] = node.log_events("catchup_started", after=start)
    assert started["from_slot"] == missed_from, started
    assert started["peer"] in {n.id for n in others}
    assert finished[0]["slots"] == target
    assert finished[0]["fetched"] == target - missed_from
    operator = [e["event"] for e in node.log_events(
        "stopped_by_operator", "resumed_by_operator", after=start)]  # fmt: skip
    assert operator == ["stopped_by_operator", "resumed_by_operator"]


def test_metrics_count_commits_and_fsyncs(healthy: Cluster) -> None:
    leader = healthy.node(healthy.leader())
    before = _metrics(leader)
    for _ in range(3):
        leader.replicate(FILE)
    healthy.converged()
    after = _metrics(leader)
    assert after["paxmr_applied_slots_total"] >= before["paxmr_applied_slots_total"] + 3
    assert (
        after["paxmr_fsync_duration_seconds_count"] > before["paxmr_fsync_duration_seconds_count"]
    )
    ok = 'paxmr_replicate_requests_total{outcome="ok"}'
    assert after[ok] == before.get(ok, 0) + 3
    latency = "paxmr_replicate_duration_seconds_count"
    assert after[latency] == before.get(latency, 0) + 3
    assert leader.cli("replicate", "no_such_file").returncode == 1
    bad = 'paxmr_replicate_requests_total{outcome="bad_file"}'
    assert _metrics(leader)[bad] == before.get(bad, 0) + 1
    status = leader.status()
    assert after["paxmr_log_entries"] == status["entries"]
    assert after["paxmr_log_chosen_slots"] == status["slots"]
    assert after["paxmr_peers_heard"] == 2
    assert after["paxmr_storage_bytes"] > 0
    # The same registry through the control socket, for hosts without the HTTP port.
    text = leader.cli("metrics").stdout
    assert "paxmr_leader_changes_seen_total" in text
    assert "paxmr_replicate_duration_seconds_bucket" in text


# --- reads -------------------------------------------------------------------------------------


def test_reads_on_a_stopped_node_warn_and_consistent_reads_fail_with_5(healthy: Cluster) -> None:
    node = _follower(healthy)
    node.replicate(FILE)
    healthy.converged()
    assert node.cli("stop").returncode == 0
    try:
        others = [n for n in healthy.nodes if n is not node]
        others[0].replicate(FILE)
        healthy.converged(nodes=others)
        last = others[0].status()["entries"] - 1
        missing = node.cli("total", str(last))
        assert missing.returncode == 1
        assert "this node may be stale: stopped" in missing.stderr
        for args in (["print"], ["total", "0"], ["merge", "0"]):
            done = node.cli(*args)
            assert done.returncode == 0, done
            assert "warning" in done.stderr
            assert "stopped" in done.stderr
            fresh = json.loads(node.cli("-o", "json", *args).stdout)["freshness"]
            assert fresh["stopped"] is True
            assert fresh["warning"]
            strict = node.cli(*args, "--consistent")
            assert strict.returncode == 5, strict
            assert "stopped" in strict.stderr
    finally:
        node.cli("resume")
    healthy.converged()


def test_a_consistent_read_right_after_resume_sees_every_committed_entry(healthy: Cluster) -> None:
    """Resume and read at once: a plain read answers from the old log, a consistent one waits
    until the node has caught up with what the leader had committed."""
    node = _follower(healthy)
    others = [n for n in healthy.nodes if n is not node]
    node.call("stop")
    try:
        for _ in range(3):
            others[0].replicate(FILE)
        target = healthy.converged(nodes=others)
        count = others[0].status()["entries"]
    finally:
        node.call("resume")
    result = node.call("print", {"consistent": True})
    assert len(result["entries"]) == count, result["freshness"]
    assert result["digest"] == target
    assert result["freshness"]["consistent"] is True
    total = node.call("total", {"positions": [count - 1], "consistent": True})
    assert total["total"] == 6  # small_tally: 3 + 2 + 1


def test_a_deposed_leader_never_answers_a_consistent_read_from_its_stale_log(
    healthy: Cluster,
) -> None:
    """The leader freezes (SIGSTOP); the others elect another and commit. The consistent read
    reaches the old leader while it is frozen, so when it thaws it still believes it leads:
    it must answer with the new entry or fail with 5, never with its old log."""
    old = healthy.node(healthy.leader())
    others = [n for n in healthy.nodes if n is not old]
    pid = old.prm_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        healthy.leader(exclude=old.id)
        others[0].replicate(FILE)
        target = healthy.converged(nodes=others)
        count = others[0].status()["entries"]
        reader = old.popen("-o", "json", "print", "--consistent")
        # The request waits on the frozen PRM's control socket, read first when it thaws.
        wait_until(lambda: _queued_on(old), "the read queued on the frozen PRM's socket")
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode in {0, 5}, (reader.returncode, out, err)
    if reader.returncode == 0:
        result = json.loads(out)
        assert len(result["entries"]) == count, result["freshness"]
        assert result["digest"] == target
    else:
        assert "no consistent read" in err, err
    digest = healthy.converged()
    assert json.loads(old.cli("-o", "json", "print", "--consistent").stdout)["digest"] == digest


def _queued_on(node: Node) -> bool:
    """Whether a connection waits, not yet accepted, on the node's control socket: the
    listening socket's receive queue counts them (ss)."""
    done = subprocess.run(
        ["ss", "-xlH", "src", str(node.settings.prm_socket)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    fields = done.stdout.split()
    return len(fields) > 2 and fields[2].isdigit() and int(fields[2]) > 0


def test_a_read_on_a_node_behind_says_by_how_many_slots(healthy: Cluster) -> None:
    """Another writer holds a follower's database (as an operator's sqlite3 shell can), so its
    next commit waits (SQLite's busy timeout, 5 s) while the leader commits on with the other
    follower. A read there answers from what the follower has stored, and must say how far
    that is behind what the leader announced."""
    leader = healthy.node(healthy.leader())
    node = _follower(healthy)
    db = sqlite3.connect(db_path(node.settings), isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        shown = len(node.call("print")["entries"])
        for _ in range(2):
            leader.replicate(FILE)

        def behind() -> dict[str, Any] | None:
            answer = node.call("print")
            return answer if answer["freshness"]["behind"] >= 2 else None

        # Polled for 2 s at most: the follower's commit gives up after 5 s.
        answer = wait_until(behind, "the follower's read says it is behind", timeout=2)
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert len(answer["entries"]) == shown  # the stale answer ...
    warning = answer["freshness"]["warning"]  # ... says so (the CLI prints it on stderr)
    assert "behind the leader by" in warning, warning
    healthy.converged()


def test_a_healthy_follower_reads_without_a_warning(healthy: Cluster) -> None:
    node = _follower(healthy)
    healthy.node(healthy.leader()).replicate(FILE)
    healthy.converged()
    done = node.cli("print", "--consistent")
    assert done.returncode == 0, done
    assert done.stderr == ""
    plain = node.cli("print")
    assert plain.returncode == 0
    assert plain.stderr == ""


def test_a_restarted_node_rejoins_with_its_log(healthy: Cluster) -> None:
    """`local.restart` restarts a running PRM too (the old one is stopped first)."""
    node = _follower(healthy)
    old = node.prm_pid()
    with service_env():
        [new] = local.restart(healthy.root, node.id, "prm")
    assert new.pid != old
    assert node.prm_pid() == new.pid
    healthy.converged()
