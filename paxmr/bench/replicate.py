"""Replication through a real local cluster: latency, throughput, failover and catch-up."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from paxmr import control, local
from paxmr.settings import Settings, load
from paxmr.wordcount import corpus, count, tally


def _replicate(settings: Settings, file: str) -> float:
    started = time.perf_counter()
    control.call(settings.prm_socket, "replicate", {"file": file, "request_id": uuid.uuid4().hex})
    return time.perf_counter() - started


def _status(settings: Settings) -> dict[str, Any]:
    result: dict[str, Any] = control.call(settings.prm_socket, "status", timeout=5.0)
    return result


def _leader(nodes: list[Settings], timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in nodes:
            st = _status(s)
            if st["role"] == "leader":
                return s.node_id
        time.sleep(0.02)
    raise RuntimeError("no leader elected")


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def _many(settings: Settings, file: str, total: int, clients: int) -> float:
    """Replicate ``total`` entries from ``clients`` connections; returns entries per second."""

    def client(n: int) -> None:
        with control.Client(settings.prm_socket) as c:
            for _ in range(n):
                c.call("replicate", {"file": file, "request_id": uuid.uuid4().hex})

    shares = [total // clients + (i < total % clients) for i in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, shares))
    return total / (time.perf_counter() - started)


def _tallies(settings: Settings) -> tuple[str, str]:
    """A small tally (a few words) and one of about 400 KB, as reduce would write them."""
    small, big = "small_reduced", "big_reduced"
    tally.write(settings.data_dir / small, [(b"alpha", 3), (b"beta", 2), (b"gamma", 1)])
    text = settings.data_dir / "big.txt"
    corpus.generate(text, 1 << 20, seed=7)
    tally.write(settings.data_dir / big, count.count_range(text, 0, text.stat().st_size).items())
    return small, big


@contextlib.contextmanager
def _cluster() -> Iterator[tuple[Path, list[Settings], Settings]]:
    """A fresh local 3-node cluster: its directory, every node's settings and its leader's."""
    with tempfile.TemporaryDirectory(prefix="paxmr-bench-") as tmp:
        root = Path(tmp)
        local.up(root, nodes=3, mappers=1)
        try:
            nodes = [load(local.config_path(root, n)) for n in (1, 2, 3)]
            yield root, nodes, nodes[_leader(nodes) - 1]
        finally:
            local.down(root)


def sequential(count: int) -> list[float]:
    """Seconds of each of ``count`` small replicates one after another at the leader of a fresh
    local 3-node cluster (what ``run`` reports as seq_p50_ms)."""
    with _cluster() as (_, _, leader):
        small, _ = _tallies(leader)
        return [_replicate(leader, small) for _ in range(count)]


def run(sequential: int, concurrent: int, catchup: int) -> dict[str, Any]:
    with _cluster() as (root, nodes, leader):
        small, big = _tallies(leader)
        tally_bytes = (leader.data_dir / big).stat().st_size
        for s in nodes:  # every node holds the files, so any node can replicate them
            for name in (small, big):
                (s.data_dir / name).write_bytes((leader.data_dir / name).read_bytes())

        seq = [_replicate(leader, small) for _ in range(sequential)]
        concurrent_per_s = _many(leader, small, concurrent, 64)
        big_lat = [_replicate(leader, big) for _ in range(30)]

        # Failover: SIGKILL the leader's PRM, time until a survivor commits.
        old = leader.node_id
        victim = next(x for x in local.load_state(root) if x.node == old and x.name == "prm")
        survivor = next(s for s in nodes if s.node_id != old)
        killed = time.perf_counter()
        os.kill(victim.pid, signal.SIGKILL)
        _replicate(survivor, small)
        failover_s = time.perf_counter() - killed
        local.restart(root, old, "prm")

        # Catch-up: one node misses `catchup` entries, then resumes.
        now_leading = nodes[_leader(nodes) - 1]
        lagger = next(s for s in nodes if s.node_id != now_leading.node_id)
        control.call(lagger.prm_socket, "stop")
        _many(now_leading, small, catchup, 64)
        target = _status(now_leading)["digest"]
        resumed = time.perf_counter()
        control.call(lagger.prm_socket, "resume")
        while _status(lagger)["digest"] != target:
            time.sleep(0.005)
        catchup_s = time.perf_counter() - resumed
    return {
        "seq_p50_ms": _ms(seq, 0.5),
        "seq_p99_ms": _ms(seq, 0.99),
        "seq_per_s": round(len(seq) / sum(seq), 1),
        "concurrent_per_s": round(concurrent_per_s, 1),
        "tally_bytes": tally_bytes,
        "tally_p50_ms": _ms(big_lat, 0.5),
        "tally_p99_ms": _ms(big_lat, 0.99),
        "failover_s": round(failover_s, 3),
        "catchup_entries": catchup,
        "catchup_s": round(catchup_s, 3),
    }
