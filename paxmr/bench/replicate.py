"""Replication through a real local cluster: latency, throughput, failover and catch-up.

Each figure comes with the floors measured in the same run on the same disk and loopback: a
durable SQLite commit of one small row and of the tally's bytes (WAL, synchronous=FULL, as the
PRM commits) and a TCP round trip between two processes. A commit through a leader and a
follower needs at least the leader's commit of the chosen entry after the follower's commit of
its accept and one round trip (floor_ms). The *_cpu_ms figures are the CPU time of the three
PRMs and their workers per replicate: on a busy machine they move less than the latencies.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import sqlite3
import subprocess
import sys
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


def _one_client(settings: Settings, file: str, count: int) -> list[float]:
    """Seconds of each of ``count`` replicates one after another on one control connection
    (as a client that keeps its connection: connecting is not the commit path)."""
    took = []
    with control.Client(settings.prm_socket) as c:
        for _ in range(count):
            started = time.perf_counter()
            c.call("replicate", {"file": file, "request_id": uuid.uuid4().hex})
            took.append(time.perf_counter() - started)
    return took


def fsync_commits(directory: Path, value: bytes, count: int) -> list[float]:
    """Seconds of each of ``count`` durable SQLite commits of one row holding ``value``, as the
    PRM's storage makes them (WAL, synchronous=FULL), in ``directory``."""
    path = directory / f"floor-{uuid.uuid4().hex}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        took = []
        for k in range(count):
            started = time.perf_counter()
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t VALUES (?, ?)", (k, value))
            took.append(time.perf_counter() - started)
        return took
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


# A TCP echo server in a process of its own (a thread would share this process's GIL).
_ECHO = """
import socket, sys
s = socket.create_server(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while data := c.recv(65536):
    c.sendall(data)
"""


def round_trips(count: int) -> list[float]:
    """Seconds of each of ``count`` round trips of 64 bytes over loopback TCP to another
    process."""
    echo = subprocess.Popen(  # noqa: S603 - our own interpreter and program
        [sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, text=True
    )
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            took = []
            for _ in range(count):
                started = time.perf_counter()
                s.sendall(b"x" * 64)
                got = 0
                while got < 64:
                    got += len(s.recv(64 - got))
                took.append(time.perf_counter() - started)
            return took
    finally:
        echo.kill()
        echo.wait()


def _cpu_seconds(root: Path) -> float:
    """CPU seconds used so far by the cluster's PRMs and their worker processes (each service
    runs in a session of its own: local._spawn). Less at the mercy of the machine's load than
    wall-clock time, so before and after a change compare even on a busy machine."""
    sessions = {s.pid for s in local.load_state(root) if s.name == "prm"}
    ticks = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) in sessions:  # session id; utime and stime follow at 11 and 12
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


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


def _shows(settings: Settings, digest: str) -> None:
    """Wait until the node shows ``digest`` (its catalog's: every entry up to it applied)."""
    while _status(settings)["digest"] != digest:
        time.sleep(0.005)


def _applied_everywhere(nodes: list[Settings], leader: Settings) -> None:
    """Wait until every node shows what the leader shows."""
    target = _status(leader)["digest"]
    for s in nodes:
        _shows(s, target)


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


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
    load_before = os.getloadavg()[0]
    with _cluster() as (root, nodes, leader):
        small, big = _tallies(leader)
        tally_bytes = (leader.data_dir / big).stat().st_size
        for s in nodes:  # every node holds the files, so any node can replicate them
            for name in (small, big):
                (s.data_dir / name).write_bytes((leader.data_dir / name).read_bytes())

        # The floors, on the disk the cluster's storage is on, before the cluster is busy.
        fsync = fsync_commits(root, b"x" * 200, 300)
        fsync_big = fsync_commits(root, (leader.data_dir / big).read_bytes(), 30)
        rtt = round_trips(1000)

        cpu = [_cpu_seconds(root)]
        seq = _one_client(leader, small, sequential)
        cpu.append(_cpu_seconds(root))
        concurrent_per_s = _many(leader, small, concurrent, 64)
        cpu.append(_cpu_seconds(root))
        # Untimed: the first tallies start the worker processes that encode and summarize
        # them (small entries need none), 0.3-0.5 s of CPU each, which would be counted as
        # some 40 ms of every timed tally's CPU. The followers' workers start once they apply
        # one, after the leader answered: every node shows them before the timed ones start.
        _one_client(leader, big, 3)
        _applied_everywhere(nodes, leader)
        cpu.append(_cpu_seconds(root))
        big_lat = _one_client(leader, big, 30)
        cpu.append(_cpu_seconds(root))
        seq_cpu, concurrent_cpu, _, big_cpu = (b - a for a, b in itertools.pairwise(cpu))

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
        _shows(lagger, target)
        catchup_s = time.perf_counter() - resumed
    return {
        "fsync_p50_ms": _ms(fsync, 0.5),
        "fsync_per_s": round(len(fsync) / sum(fsync), 1),
        "tally_fsync_p50_ms": _ms(fsync_big, 0.5),
        "rtt_p50_ms": _ms(rtt, 0.5),
        "floor_ms": round(_ms(fsync, 0.5) * 2 + _ms(rtt, 0.5), 2),
        "seq_p50_ms": _ms(seq, 0.5),
        "seq_p99_ms": _ms(seq, 0.99),
        "seq_cpu_ms": round(seq_cpu * 1000 / len(seq), 3),
        "seq_per_s": round(len(seq) / sum(seq), 1),
        "concurrent_per_s": round(concurrent_per_s, 1),
        "concurrent_cpu_ms": round(concurrent_cpu * 1000 / concurrent, 3),
        "tally_bytes": tally_bytes,
        "tally_p50_ms": _ms(big_lat, 0.5),
        "tally_p99_ms": _ms(big_lat, 0.99),
        "tally_cpu_ms": round(big_cpu * 1000 / len(big_lat), 3),
        "failover_s": round(failover_s, 3),
        "catchup_entries": catchup,
        "catchup_s": round(catchup_s, 3),
        "seq_p50_vs_floor": round(_ms(seq, 0.5) / (_ms(fsync, 0.5) * 2 + _ms(rtt, 0.5)), 2),
        "concurrent_vs_fsync_per_s": round(concurrent_per_s * sum(fsync) / len(fsync), 2),
        "tally_p50_vs_fsync": round(_ms(big_lat, 0.5) / _ms(fsync_big, 0.5), 2),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
