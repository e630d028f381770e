"""Heavy client load against a real local cluster: does consensus keep its deadlines?

Two storms, each on a fresh 3-node local cluster (loopback only):

- merge: ``merges`` concurrent ``merge`` calls over every position of a log of ``entries`` large
  tallies, with ``status`` polled on every node meanwhile;
- replicate: ``replicates`` concurrent replicates of a large tally, spread over the nodes.

For each it prints the elections the storm caused (candidate turns, summed over the nodes), the
replies by code, the error replies that do not name their request id (a client cannot retry those
safely), refusals that said "nothing was submitted" although the entry landed, and the ``status``
p99; the replicate storm also the median time of the successful replicates and the bytes the
PRMs wrote meanwhile (all, and to storage: the rest is nearly all peer traffic). Figures, not
assertions: this is a benchmark.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

from paxmr import control, local
from paxmr.settings import Settings, load
from paxmr.wordcount import tally

_CANDIDATE = re.compile(r'^paxmr_role_changes_total\{role="candidate"\} ([0-9.e+]+)$', re.MULTILINE)


def write_tally(path: Path, size: int, seed: int = 0) -> int:
    """A valid reduced tally of about ``size`` bytes (distinct synthetic words); its size."""
    words = max(1, size // 16)
    items = ((b"w%02d%011d" % (seed % 100, i), 1 + (i * 7919) % 997) for i in range(words))
    tally.write(path, items)
    return path.stat().st_size


def elections(nodes: list[Settings]) -> int:
    total = 0
    for s in nodes:
        text = control.call(s.prm_socket, "metrics", timeout=30.0)["text"]
        total += sum(int(float(m)) for m in _CANDIDATE.findall(text))
    return total


def leader(nodes: list[Settings], timeout: float = 60.0) -> Settings:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in nodes:
            with contextlib.suppress(control.RemoteError, OSError):
                if control.call(s.prm_socket, "status", timeout=5.0)["role"] == "leader":
                    return s
        time.sleep(0.05)
    raise RuntimeError("no leader elected")


class Poller:
    """Polls read-only ops (``status`` by default) on every node while load runs: their
    latencies by op, and the calls that failed."""

    def __init__(self, nodes: list[Settings], ops: tuple[str, ...] = ("status",)) -> None:
        self.nodes = nodes
        self.ops = ops
        self.latencies: dict[str, list[float]] = {op: [] for op in ops}
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for s in self.nodes:
                for op in self.ops:
                    started = time.perf_counter()
                    try:
                        control.call(s.prm_socket, op, timeout=30.0)
                        self.latencies[op].append(time.perf_counter() - started)
                    except (control.RemoteError, OSError):
                        self.failures += 1
            self._stop.wait(0.05)

    def p99_ms(self, op: str = "status") -> float | None:
        if not self.latencies[op]:
            return None
        ordered = sorted(self.latencies[op])
        return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1)


def call(settings: Settings, op: str, args: dict[str, Any]) -> tuple[str, str, float]:
    """(code, message, seconds) of one call on its own connection: "ok" on success."""
    started = time.perf_counter()
    try:
        control.call(settings.prm_socket, op, args, timeout=120.0)
    except control.RemoteError as exc:
        return exc.code, str(exc), time.perf_counter() - started
    except OSError as exc:
        return "client_" + type(exc).__name__, str(exc), time.perf_counter() - started
    return "ok", "", time.perf_counter() - started


def _written(root: Path) -> tuple[int, int]:
    """Bytes the PRMs wrote so far, summed: (to anything, to storage), from /proc/PID/io (what
    a PRM writes besides storage is nearly all peer traffic)."""
    total = disk = 0
    for service in local.load_state(root):
        if service.name == "prm":
            io = Path(f"/proc/{service.pid}/io").read_text().splitlines()
            fields = dict(line.split(": ") for line in io)
            total += int(fields["wchar"])
            disk += int(fields["write_bytes"])
    return total, disk


def _cluster(root: Path, tally_bytes: int) -> tuple[list[Settings], str]:
    local.up(root, nodes=3, mappers=1)
    nodes = [load(local.config_path(root, n)) for n in (1, 2, 3)]
    name = "storm_reduced"
    for i, s in enumerate(nodes):
        write_tally(s.data_dir / name, tally_bytes, seed=i)
    leader(nodes)
    return nodes, name


def merge_storm(tally_bytes: int, entries: int, merges: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="paxmr-storm-") as tmp:
        root = Path(tmp)
        try:
            nodes, name = _cluster(root, tally_bytes)
            lead = leader(nodes)
            for _ in range(entries):
                code, message, _ = call(lead, "replicate", {"file": name})
                if code != "ok":
                    raise RuntimeError(f"filling the log: {code}: {message}")
            time.sleep(1.0)  # let followers apply
            before = elections(nodes)
            positions = list(range(entries))
            started = time.perf_counter()
            with Poller(nodes) as poller, ThreadPoolExecutor(merges) as pool:
                replies = list(
                    pool.map(
                        lambda i: call(nodes[i % 3], "merge", {"positions": positions, "top": 10}),
                        range(merges),
                    )
                )
            seconds = time.perf_counter() - started
            time.sleep(1.0)
            after = elections(nodes)
        finally:
            local.down(root)
    return {
        "storm": "merge",
        "tally_bytes": tally_bytes,
        "entries": entries,
        "merges": merges,
        "seconds": round(seconds, 2),
        "replies": dict(Counter(code for code, _, _ in replies)),
        "elections": after - before,
        "status_p99_ms": poller.p99_ms(),
        "status_failures": poller.failures,
    }


def replicate_storm(tally_bytes: int, replicates: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="paxmr-storm-") as tmp:
        root = Path(tmp)
        try:
            nodes, name = _cluster(root, tally_bytes)
            before = elections(nodes)
            written = _written(root)
            ids = [uuid.uuid4().hex for _ in range(replicates)]
            started = time.perf_counter()
            with Poller(nodes) as poller, ThreadPoolExecutor(replicates) as pool:
                replies = list(
                    pool.map(
                        lambda i: call(
                            nodes[i % 3], "replicate", {"file": name, "request_id": ids[i]}
                        ),
                        range(replicates),
                    )
                )
            seconds = time.perf_counter() - started
            time.sleep(2.0)  # anything still in flight lands or is refused
            after = elections(nodes)
            total, disk = (now - then for now, then in zip(_written(root), written, strict=True))
            landed = {
                e.get("request_id")
                for e in control.call(leader(nodes).prm_socket, "print", timeout=60.0)["entries"]
            }
        finally:
            local.down(root)
    errors = [
        (rid, code, msg) for rid, (code, msg, _) in zip(ids, replies, strict=True) if code != "ok"
    ]
    ok_s = [seconds for code, _, seconds in replies if code == "ok"]
    return {
        "storm": "replicate",
        "tally_bytes": tally_bytes,
        "replicates": replicates,
        "seconds": round(seconds, 2),
        "replies": dict(Counter(code for code, _, _ in replies)),
        "ok_p50_s": round(statistics.median(ok_s), 2) if ok_s else None,
        "errors_without_request_id": sum(1 for rid, _, msg in errors if rid not in msg),
        "errors_that_landed": sum(1 for rid, _, _ in errors if rid in landed),
        "definite_refusals_that_landed": sum(
            1 for rid, code, msg in errors if rid in landed and "nothing was submitted" in msg
        ),
        "landed": len(landed & set(ids)),
        "elections": after - before,
        "status_p99_ms": poller.p99_ms(),
        "status_failures": poller.failures,
        "prm_written_mib": round(total / 2**20, 1),
        "prm_written_to_storage_mib": round(disk / 2**20, 1),
    }


def run(tally_bytes: int, entries: int, merges: int, replicates: int) -> list[dict[str, Any]]:
    out = []
    if merges:
        out.append(merge_storm(tally_bytes, entries, merges))
    if replicates:
        out.append(replicate_storm(tally_bytes, replicates))
    return out
