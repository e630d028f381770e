"""The log at scale (issue 12): heavy client work is admitted or refused as busy, every replicate
error names its request id, and the log's quota refuses a replicate without losing anything."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from paxmr import backup, control, local, paxos
from paxmr.storage import Identity, Storage
from tests.support.local import Node, running_cluster, service_env, sigkill, small_tally
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

# Few, long words: a large value without much parsing (over the PRM's 64 KiB inline size, so it
# goes through the worker processes).
WORD = 1000


def _tally(node: Node, name: str, size: int, tag: bytes = b"") -> str:
    words = sorted(tag + b"w%07d" % i + b"x" * WORD for i in range(size // (WORD + 11)))
    (node.data / name).write_bytes(b"paxmr-tally 1\n" + b"".join(w + b"\t1\n" for w in words))
    return name


def _call(node: Node, op: str, args: dict[str, object]) -> tuple[str, str, str | None]:
    """(code, message, request id of the error) of one call; code "ok" on success."""
    try:
        node.call(op, args, timeout=120.0)
    except control.RemoteError as exc:
        return exc.code, str(exc), exc.request_id
    return "ok", "", None


def test_heavy_requests_past_the_limit_are_refused_as_busy_and_name_their_request() -> None:
    env = {"PAXMR_LIMITS__HEAVY_REQUESTS": "1", "PAXMR_LIMITS__HEAVY_WORKERS": "1"}
    with running_cluster(env=env) as cluster:
        leader = cluster.node(cluster.leader())
        for n in cluster.nodes:
            _tally(n, "big_reduced", 2 << 20)
        for _ in range(2):
            leader.replicate("big_reduced")
        cluster.converged()

        # Merges: one runs at a time, the others are refused at once, clearly.
        with ThreadPoolExecutor(6) as pool:
            merges = list(
                pool.map(lambda _: _call(leader, "merge", {"positions": [0, 1, 0]}), range(6))
            )
        codes = [code for code, _, _ in merges]
        assert "ok" in codes, merges
        assert "busy" in codes, merges
        assert set(codes) <= {"ok", "busy"}, merges
        busy = next(message for code, message, _ in merges if code == "busy")
        assert "limit 1" in busy, busy

        # Replicates of large tallies on every node at once: each error names its request id;
        # one refused before its submit ("nothing was submitted") never lands.
        ids = [uuid.uuid4().hex for _ in range(9)]
        with ThreadPoolExecutor(9) as pool:
            replies = list(
                pool.map(
                    lambda i: _call(
                        cluster.nodes[i % 3],
                        "replicate",
                        {"file": "big_reduced", "request_id": ids[i]},
                    ),
                    range(9),
                )
            )
        errors = [(rid, r) for rid, r in zip(ids, replies, strict=True) if r[0] != "ok"]
        assert errors, "with one heavy request at a time, some of 9 must be refused"
        for rid, (code, message, named) in errors:
            assert code != "internal", message
            assert named == rid, (code, message)
        cluster.converged()
        landed = {e["request_id"] for e in leader.call("print")["entries"]}
        for rid, (_, message, _) in errors:
            if "nothing was submitted" in message:
                assert rid not in landed, message
        for rid, (code, _, _) in zip(ids, replies, strict=True):
            if code == "ok":
                assert rid in landed


def test_the_log_quota_refuses_a_replicate_and_loses_nothing() -> None:
    with running_cluster(env={"PAXMR_LIMITS__LOG_ENTRIES": "3"}) as cluster:
        leader = cluster.node(cluster.leader())
        follower = cluster.node(leader.id % 3 + 1)
        for n in cluster.nodes:
            small_tally(n)
        for _ in range(3):
            leader.replicate("small_reduced")
        before = cluster.converged()

        for node in (leader, follower):
            done = node.cli("-o", "json", "replicate", "small_reduced", "--request-id", "over")
            assert done.returncode == 1, done
            assert "[quota]" in done.stderr or "quota" in done.stderr, done.stderr
            assert "log full" in done.stderr, done.stderr
            assert "(request id over)" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr

        assert cluster.converged() == before
        entries = leader.call("print")["entries"]
        assert len(entries) == 3
        assert "over" not in {e["request_id"] for e in entries}

        status = json.loads(follower.cli("-o", "json", "status").stdout)
        assert status["prm"]["log"]["full"] is True
        assert status["prm"]["log"]["entries"] == 3
        assert status["prm"]["log"]["entries_quota"] == 3
        text = follower.cli("status").stdout
        assert "3 entries of 3: FULL" in text, text
        assert "log full" in follower.cli("health").stdout


def _chain_ok(db: Path) -> tuple[int, str]:
    """(entries, digest) of a storage file, after re-computing its digest chain row by row."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        digest = paxos.GENESIS_DIGEST
        entries = 0
        for slot, rid, value, position, stored in conn.execute(
            "SELECT slot, request_id, value, position, digest FROM log ORDER BY slot"
        ):
            digest = paxos.chain_digest(digest, paxos.LogEntry(slot, rid, bytes(value), position))
            assert digest == bytes(stored), f"slot {slot}: digest chain broken"
            entries += position is not None
        return entries, digest.hex()
    finally:
        conn.close()


def test_backup_under_load_restores_onto_a_wiped_node_that_catches_up() -> None:
    with running_cluster() as cluster:
        leader = cluster.node(cluster.leader())
        node = cluster.node(leader.id % 3 + 1)  # backed up, wiped and restored
        for n in cluster.nodes:
            small_tally(n)
        for _ in range(5):
            leader.replicate("small_reduced")
        cluster.converged()

        # Back up while replicates keep landing.
        stop = threading.Event()
        landed: list[int] = []

        def load() -> None:
            while not stop.is_set():
                landed.append(leader.replicate("small_reduced")["position"])

        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(load)
            while len(landed) < 5:
                time.sleep(0.01)
            done = node.cli("-o", "json", "backup", "node.backup")
            time.sleep(0.2)
            stop.set()
            running.result()
        assert done.returncode == 0, done
        info = json.loads(done.stdout)
        copy = Path(info["path"])
        assert copy == node.settings.state_dir / "backups" / "node.backup"
        escape = node.cli("backup", "../prm.db")
        assert escape.returncode == 1, escape
        assert "bad_args" in escape.stderr
        assert info["voting"] is False
        assert info["acceptor_state"] is False
        assert info["entries"] >= 5
        assert _chain_ok(copy) == (info["entries"], info["digest"])
        total = cluster.converged()
        assert len(leader.call("print")["entries"]) > info["entries"]  # it missed some: load

        # Refused while the PRM runs, and over existing storage.
        refused = node.cli("restore", "--from", copy)
        assert refused.returncode == 1, refused
        assert "running" in refused.stderr
        sigkill(node.prm_pid())
        refused = node.cli("restore", "--from", copy)
        assert refused.returncode == 1, refused
        assert "exists" in refused.stderr

        # Wiped, restored: non-voting storage with the backup's log, then catch-up.
        state = node.settings.state_dir
        for f in state.glob("prm.db*"):
            f.unlink()
        done = node.cli("-o", "json", "restore", "--from", copy)
        assert done.returncode == 0, done
        conn = sqlite3.connect(f"file:{state / 'prm.db'}?mode=ro", uri=True)
        try:
            restored = backup.describe(conn)
        finally:
            conn.close()
        assert restored["voting"] is False
        assert restored["acceptor_state"] is False
        assert restored["digest"] == info["digest"]
        with service_env():
            local.restart(cluster.root, node.id, "prm")
        assert cluster.converged() == total
        leader = cluster.node(cluster.leader())
        leader.replicate("small_reduced")
        cluster.converged()
        wait_until(lambda: node.status()["voting"] or None, "the restored node votes again")


def test_a_raw_copy_of_a_live_storage_is_restored_forgetful(tmp_path: Path) -> None:
    """`paxmr restore` of a plain copy of a voting prm.db (not a backup) still drops its
    promises and accepts: the node never votes with state it may since have overwritten."""
    live = tmp_path / "live.db"
    storage = Storage.open(live, bootstrap=True, identity=Identity("c", (1, 2, 3)))
    storage.commit(
        paxos.Persist(promised=paxos.Ballot(7, 2), used_round=7,
                      accepted={0: (paxos.Ballot(7, 2), paxos.Entry("r", b"v"))})
    )  # fmt: skip
    storage.close()
    db = tmp_path / "state" / "prm.db"
    info = backup.restore(live, db, [1, 2, 3])
    assert info["voting"] is False
    assert info["acceptor_state"] is False
    durable = Storage.open(db).load()
    assert not durable.voting
    assert durable.promised == paxos.Ballot(0, 0)
    assert durable.accepted == {}
    with pytest.raises(backup.BackupError, match="has no address"):
        backup.restore(live, tmp_path / "other" / "prm.db", [1, 2])
