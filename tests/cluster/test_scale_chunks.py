"""Chunks of an upload that no manifest committed are reclaimed (issue 12; paxmr/chunks.py):
they stop counting against the log's quota and their values leave every replica's storage, while
a committed chunked tally keeps every chunk."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from paxmr import control, local, paxos
from paxmr.services.prm import db_path
from tests.support.local import Node, running_cluster, service_env, sigkill
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

ENV = {"PAXMR_LIMITS__VALUE_BYTES": "4096", "PAXMR_TIMING__CHUNK_RECLAIM": "1.5"}


def _tally(node: Node, name: str, words: int) -> str:
    lines = b"".join(b"w%09d\t%d\n" % (i, 1 + i % 7) for i in range(words))
    (node.data / name).write_bytes(b"paxmr-tally 1\n" + lines)
    return name


def _chunk_bytes(node: Node) -> int:
    """Value bytes of the chunks in the node's storage."""
    with sqlite3.connect(f"file:{db_path(node.settings)}?mode=ro", uri=True) as db:
        (total,) = db.execute(
            "SELECT COALESCE(SUM(length(value)), 0) FROM log WHERE substr(request_id, 1, ?) = ?",
            (len(paxos.CHUNK_PREFIX), paxos.CHUNK_PREFIX),
        ).fetchone()
    return int(total)


def _merged(node: Node, position: int) -> tuple[object, ...]:
    got = node.call("merge", {"positions": [position], "top": 0})
    return got["distinct"], got["total"], got["words"]


def test_chunks_of_an_upload_cut_short_are_reclaimed_and_committed_ones_kept() -> None:
    with running_cluster(env=ENV) as cluster:
        leader = cluster.leader()
        follower = next(n for n in cluster.nodes if n.id != leader)
        kept = follower.replicate(_tally(follower, "kept_reduced", 1500))  # 5 chunks
        merged = _merged(follower, kept["position"])
        usage = follower.status()["log"]["bytes"]
        chunked = _chunk_bytes(follower)
        assert chunked > 4 * 4096

        # An upload of about 100 chunks through the follower, whose PRM dies after 10 landed.
        big = _tally(follower, "big_reduced", 30_000)
        failed: list[control.RemoteError] = []

        def upload() -> None:
            try:
                follower.replicate(big)
            except control.RemoteError as exc:  # its PRM was killed
                failed.append(exc)

        client = threading.Thread(target=upload, daemon=True)
        client.start()
        wait_until(
            lambda: _chunk_bytes(follower) >= chunked + 10 * 4096, "10 chunks landed", timeout=30
        )
        sigkill(follower.prm_pid())
        client.join()
        assert failed
        with service_env(ENV):
            local.restart(cluster.root, follower.id, "prm")
        abandoned = max(_chunk_bytes(n) for n in cluster.nodes) - chunked
        assert abandoned >= 10 * 4096

        # Reclaimed everywhere within two periods of timing.chunk_reclaim, and no longer counted.
        def reclaimed() -> bool:
            return all(
                _chunk_bytes(n) == chunked and n.status()["log"]["bytes"] == usage
                for n in cluster.nodes
            )

        wait_until(reclaimed, "the abandoned chunks reclaimed on every node", timeout=30)
        for n in cluster.nodes:  # the committed tally is whole
            assert _merged(n, kept["position"]) == merged
