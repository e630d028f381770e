"""The log at scale (issue 12): heavy client work is admitted or refused as busy, every replicate
error names its request id, and the log's quota refuses a replicate without losing anything."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from paxmr import control

from .support import Node, running_cluster, small_tally

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
