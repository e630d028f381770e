"""Failures on a real 3-node cluster: operator stop/resume, lost quorum, SIGKILLed PRMs, restarts.

Each test leaves the cluster healthy (the ``healthy`` fixture heals it if a test failed midway),
so the module shares one cluster; the full restart runs last and keeps it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
import uuid

import pytest

from paxmr import control, local
from tests.support.local import (
    REPLICATE_TIMEOUT,
    Cluster,
    Node,
    Stream,
    alive,
    all_acked_everywhere,
    service_env,
    sigkill,
)
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

FILE = "small_reduced"
CLI_START = 30.0  # a loaded machine's `paxmr` start, before its request reaches the PRM


def _others(cluster: Cluster, node_id: int) -> list[Node]:
    return [n for n in cluster.nodes if n.id != node_id]


def _commits(node: Node, times: int = 1) -> None:
    """Replicates acknowledged by ``node`` (in-process: the CLI's own path is tested elsewhere)."""
    for _ in range(times):
        node.replicate(FILE)


def test_status_of_a_healthy_cluster_shows_every_peer_connected(healthy: Cluster) -> None:
    cluster = healthy
    leader = cluster.leader()
    _commits(cluster.node(leader))
    cluster.converged()
    for n in cluster.nodes:
        prm = n.cli_json("status")["prm"]
        assert prm["leader"] == leader
        assert all(p["connected"] for p in prm["peers"].values()), (n.id, prm["peers"])
    # The leader hears every follower.
    peers = cluster.node(leader).status()["peers"]
    assert all(p["up"] for p in peers.values()), peers


def test_text_status_of_a_healthy_cluster_shows_every_peer_up(healthy: Cluster) -> None:
    cluster = healthy
    _commits(cluster.node(cluster.leader()))
    cluster.converged()
    for n in cluster.nodes:
        text = n.cli("status").stdout
        peers_line = next(line for line in text.splitlines() if line.strip().startswith("peers"))
        assert "DOWN" not in peers_line, f"node {n.id}: {peers_line.strip()}"


def test_stopping_the_leader_mid_stream_loses_nothing_acknowledged(healthy: Cluster) -> None:
    cluster = healthy
    old = cluster.node(cluster.leader())
    with Stream(cluster.nodes) as stream:
        stream.wait_for(15)
        assert old.cli("stop").returncode == 0
        stream.wait_for(15)  # a new leader among the other two commits
        assert cluster.leader(exclude=old.id) != old.id
        assert old.cli("resume").returncode == 0
        stream.wait_for(15)
    all_acked_everywhere(cluster, stream.acked)


@pytest.mark.parametrize("which", ["follower", "leader"])
def test_stop_refuses_the_others_commit_resume_catches_up(healthy: Cluster, which: str) -> None:
    cluster = healthy
    leader = cluster.leader()
    victim = cluster.node(leader if which == "leader" else leader % 3 + 1)
    others = _others(cluster, victim.id)

    done = victim.cli("stop")
    assert done.returncode == 0, done.stderr
    status = victim.status_report()["prm"]
    assert status["stopped"] is True
    assert status["role"] != "leader"

    refused = victim.cli("replicate", FILE)
    assert refused.returncode == 1, refused
    assert "stopped" in refused.stderr
    assert "Traceback" not in refused.stderr

    frozen = victim.status()["digest"]
    for node in others * 3:
        _commits(node)
    target = cluster.converged(nodes=others)
    assert victim.status()["digest"] == frozen != target  # it really missed them
    assert victim.status()["stopped"] is True

    done = victim.cli("resume")
    assert done.returncode == 0, done.stderr
    assert cluster.converged() == target
    status = victim.status_report()["prm"]
    assert status["stopped"] is False
    assert status["digest"] == target
    # And it serves again: its own replicate, through the CLI, lands everywhere.
    done = victim.cli("-o", "json", "replicate", FILE)
    assert done.returncode == 0, done.stderr
    cluster.converged()


def test_no_quorum_replicate_fails_with_exit_5_within_its_timeout(healthy: Cluster) -> None:
    cluster = healthy
    lonely = cluster.node(cluster.leader())  # the hardest case: the leader loses its followers
    stopped = _others(cluster, lonely.id)
    before = lonely.status()["digest"]
    for n in stopped:
        assert n.cli("stop").returncode == 0
    try:
        started = time.monotonic()
        done = lonely.cli("replicate", FILE, timeout=REPLICATE_TIMEOUT * 6)
        elapsed = time.monotonic() - started
        assert done.returncode == 5, done
        assert "quorum" in done.stderr or "deadline" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert elapsed < 3 * REPLICATE_TIMEOUT, f"replicate took {elapsed:.1f} s"
        assert lonely.status()["digest"] == before
        # The follower side too: a node that is not leader, with the only other node stopped.
        status = lonely.status_report()["prm"]
        assert status["stopped"] is False
    finally:
        for n in stopped:
            n.cli("resume")
    _commits(lonely)
    cluster.converged()


def test_no_quorum_outcome_is_unknown_and_a_retry_with_its_request_id_lands_once(
    healthy: Cluster,
) -> None:
    """Exit 5 may hide an entry a quorum chooses later: the CLI must not call it refused, and
    retrying with the request id it printed must land the tally at most once."""
    cluster = healthy
    lonely = cluster.node(cluster.leader())
    stopped = _others(cluster, lonely.id)
    cluster.converged()
    count = lonely.status()["entries"]
    for n in stopped:
        assert n.cli("stop").returncode == 0
    try:
        done = lonely.cli("replicate", FILE)
        assert done.returncode == 5, done
    finally:
        for n in stopped:
            n.cli("resume")
    assert "refused" not in done.stderr, done.stderr
    assert "unknown" in done.stderr, done.stderr
    match = re.search(r"--request-id (\S+?)\b", done.stderr)
    assert match, f"no request id to retry with in {done.stderr!r}"
    rid = match[1]

    retry = lonely.cli("-o", "json", "replicate", FILE, "--request-id", rid)
    assert retry.returncode == 0, retry.stderr
    position = json.loads(retry.stdout)["position"]
    again = cluster.node(stopped[0].id).cli("-o", "json", "replicate", FILE, "--request-id", rid)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["position"] == position
    cluster.converged()
    ids = [e["request_id"] for e in lonely.call("print")["entries"]]
    assert ids.count(rid) == 1
    assert len(ids) == count + 1
    assert ids.index(rid) == position


def test_a_prm_killed_while_a_replicate_waits_exits_5_naming_the_request_id(
    healthy: Cluster,
) -> None:
    """The PRM dies before it answers: the CLI cannot know whether the entry lands, so it says
    so with the no-quorum exit code (5) and the request id, like the PRM's own unknown outcomes,
    and a retry with that id lands the tally once."""
    cluster = healthy
    lonely = cluster.node(cluster.leader())
    stopped = _others(cluster, lonely.id)
    cluster.converged()
    for n in stopped:
        assert n.cli("stop").returncode == 0
    try:
        waiting = lonely.popen("replicate", FILE)

        # Pending at the PRM (no quorum: it waits up to the replicate timeout), then killed.
        def pending() -> bool:
            assert waiting.poll() is None, "the CLI ended before its replicate was seen pending"
            status = lonely.status()
            return int(status["in_flight"]) + int(status["pending"]) > 0

        wait_until(pending, "the replicate pending at the PRM", timeout=CLI_START, interval=0.02)
        sigkill(lonely.prm_pid())
        _, err = waiting.communicate(timeout=REPLICATE_TIMEOUT * 3)
    finally:
        for n in stopped:
            n.cli("resume")
    assert waiting.returncode == 5, err
    assert "may still land" in err, err
    [rid] = re.findall(r"--request-id ([0-9a-f]{32})", err)
    with service_env():
        local.restart(cluster.root, lonely.id, "prm")
    retry = lonely.cli("-o", "json", "replicate", FILE, "--request-id", rid)
    assert retry.returncode == 0, retry.stderr
    cluster.converged()
    ids = [e["request_id"] for e in lonely.call("print")["entries"]]
    assert ids.count(rid) == 1


def test_a_replicate_reported_as_refused_never_lands(healthy: Cluster) -> None:
    """A follower forwards a replicate to the leader, then the operator stops the follower: the
    client must not be told 'refused' for an entry the leader goes on to get chosen. The leader
    is frozen (SIGSTOP) for a moment, well under an election timeout, so the forward is sure to
    be in flight when the stop comes."""
    cluster = healthy
    leader = cluster.node(cluster.leader())
    node = cluster.node(leader.id % 3 + 1)
    rid = uuid.uuid4().hex
    outcome: list[object] = []

    def client() -> None:
        try:
            outcome.append(node.replicate(FILE, rid))
        except control.RemoteError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    pid = leader.prm_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        thread.start()
        wait_until(
            lambda: node.status()["pending"] == 1, "the replicate pending", timeout=5, interval=0.05
        )  # submitted and forwarded
        node.call("stop")
        thread.join(REPLICATE_TIMEOUT * 4)
    finally:
        os.kill(pid, signal.SIGCONT)
        node.call("resume")
    assert outcome, "the replicate did not return"
    time.sleep(1)
    cluster.converged()
    ids = [e["request_id"] for e in node.call("print")["entries"]]
    if isinstance(outcome[0], control.RemoteError):
        assert "refused" not in str(outcome[0]) or rid not in ids, (
            f"told {outcome[0]!s:.80}, yet it landed at position {ids.index(rid)}"
        )
    else:
        assert ids.count(rid) == 1


def test_sigkill_a_prm_mid_stream_nothing_acknowledged_is_lost(healthy: Cluster) -> None:
    cluster = healthy
    leader = cluster.leader()
    victim = cluster.node(leader % 3 + 1)  # a follower
    with Stream(cluster.nodes) as stream:
        stream.wait_for(20)
        sigkill(victim.prm_pid())
        stream.wait_for(20)  # the other two keep committing without it
        with service_env():
            local.restart(cluster.root, victim.id, "prm")
        stream.wait_for(20)
    assert stream.acked
    all_acked_everywhere(cluster, stream.acked)


def test_sigkill_the_leader_a_new_leader_commits(healthy: Cluster) -> None:
    cluster = healthy
    old = cluster.leader()
    survivors = _others(cluster, old)
    with Stream(survivors) as stream:
        stream.wait_for(10)
        old_ballot = survivors[0].status()["ballot"]
        sigkill(cluster.node(old).prm_pid())
        stream.wait_for(10)  # acknowledged by survivors: someone else leads now
        new = cluster.leader(exclude=old)
        assert new != old
        assert survivors[0].status()["ballot"] > old_ballot
        _commits(cluster.node(new))
    with service_env():
        local.restart(cluster.root, old, "prm")
    all_acked_everywhere(cluster, stream.acked)
    # The restarted node follows; it does not disturb the log.
    assert cluster.leader() in {n.id for n in cluster.nodes}


def test_frozen_leader_wakes_up_deposed_and_the_logs_agree(healthy: Cluster) -> None:
    """SIGSTOP the leader longer than an election timeout: the others elect and commit; when it
    runs again it still believes it leads (competing proposers), yet nothing acknowledged is
    lost, nothing lands twice and every log ends the same."""
    cluster = healthy
    old = cluster.node(cluster.leader())
    pid = old.prm_pid()
    with Stream(cluster.nodes) as stream:
        stream.wait_for(15)
        os.kill(pid, signal.SIGSTOP)
        try:
            stream.wait_for(15)  # the two others commit without it
            assert cluster.leader(exclude=old.id) != old.id
        finally:
            os.kill(pid, signal.SIGCONT)
        stream.wait_for(15)
    all_acked_everywhere(cluster, stream.acked)


def test_sigkill_every_prm_then_restart_keeps_acknowledged_entries(healthy: Cluster) -> None:
    """Power loss of the whole cluster: what was acknowledged was on a quorum's disk."""
    cluster = healthy
    with Stream(cluster.nodes, clients_per_node=1) as stream:
        stream.wait_for(15)
        for n in cluster.nodes:
            sigkill(n.prm_pid())
    acked = dict(stream.acked)
    with service_env():
        for n in cluster.nodes:
            local.restart(cluster.root, n.id, "prm")
    cluster.leader()
    _commits(cluster.node(1))
    all_acked_everywhere(cluster, acked)


def test_cli_reports_a_dead_prm_with_exit_3(healthy: Cluster) -> None:
    cluster = healthy
    node = cluster.node(cluster.leader() % 3 + 1)
    sigkill(node.prm_pid())
    for args in (["replicate", FILE], ["print"], ["total", "0"], ["stop"]):
        done = node.cli(*args)
        assert done.returncode == 3, (args, done)
        assert "not running" in done.stderr
        assert "Traceback" not in done.stderr
    done = node.cli("-o", "json", "status")  # status reports which service is down, exit 3
    assert done.returncode == 3, done
    status = json.loads(done.stdout)
    assert status["services"]["prm"] == "down"
    assert status["prm"] is None
    # The leader sees the peer as unreachable.
    leader = cluster.node(cluster.leader(exclude=node.id))
    wait_until(
        lambda: not leader.status()["peers"][str(node.id)]["connected"],
        "the leader reports the dead peer disconnected",
    )
    with service_env():
        local.restart(cluster.root, node.id, "prm")
    cluster.converged()


def test_prm_that_lost_its_disk_catches_up_and_votes_again(healthy: Cluster) -> None:
    """SIGKILL, delete its storage, restart uninitialized: it must relearn the log from its peers
    and then count towards a quorum again (the other follower stopped, the cluster still commits).
    """
    cluster = healthy
    for n in cluster.nodes:
        _commits(n)
    digest = cluster.converged()
    leader = cluster.leader()
    wiped, other = _others(cluster, leader)
    sigkill(wiped.prm_pid())
    state = cluster.root / f"n{wiped.id}" / "state"
    for f in state.glob("prm.db*"):
        f.unlink()
    with service_env():
        local.restart(cluster.root, wiped.id, "prm")
    assert cluster.converged() == digest
    _commits(cluster.node(leader))
    digest = cluster.converged()
    wait_until(lambda: wiped.status()["voting"], "the wiped node votes again")
    assert other.cli("stop").returncode == 0
    try:
        _commits(cluster.node(leader), 2)  # a quorum: the leader and the wiped node
        assert cluster.converged(nodes=[cluster.node(leader), wiped]) != digest
    finally:
        other.cli("resume")
    cluster.converged()


def test_graceful_stop_of_a_prm_logs_only_json_lines(healthy: Cluster) -> None:
    cluster = healthy
    node = cluster.node(cluster.leader() % 3 + 1)  # its peers stay up: their links are open
    offset = node.prm_log.stat().st_size
    pid = node.prm_pid()
    os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    wait_until(lambda: not alive(pid), f"pid {pid} gone after SIGTERM", interval=0.05)
    with service_env():
        local.restart(cluster.root, node.id, "prm")
    with node.prm_log.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    # Plain JSON lines (jq reads them): the <N> priority prefix is for the journal only.
    bad = [line for line in lines if not re.fullmatch(r"\{.*\}", line)]
    assert not bad, "\n".join(bad[:10])
    assert all(isinstance(json.loads(line), dict) for line in lines)


def test_restart_of_all_three_prms_keeps_the_log(healthy: Cluster) -> None:
    cluster = healthy
    for n in cluster.nodes:
        _commits(n)
    digest = cluster.converged()
    before = {n.id: n.cli_json("print") for n in cluster.nodes}
    ballot = cluster.node(cluster.leader()).status()["ballot"]
    pids = [s.pid for s in local.load_state(cluster.root)]

    assert local.down(cluster.root) == len(pids)  # SIGTERM to every service
    wait_until(lambda: not any(alive(p) for p in pids), "every PRM gone", interval=0.05)
    with service_env():
        local.up(cluster.root, 3, cluster.mappers)

    assert cluster.converged() == digest
    after = {n.id: n.cli_json("print") for n in cluster.nodes}
    for printed in (*before.values(), *after.values()):
        printed.pop("freshness")  # who leads may differ after the restart
    assert after == before
    # The restarted cluster elects with a higher ballot and appends after the old entries.
    count = len(before[1]["entries"])
    result = cluster.node(2).cli_json("replicate", FILE)
    assert result["position"] == count
    cluster.converged()
    assert cluster.node(cluster.leader()).status()["ballot"] > ballot
    assert [e["request_id"] for e in cluster.node(3).call("print")["entries"]][:count] == [
        e["request_id"] for e in before[1]["entries"]
    ]
