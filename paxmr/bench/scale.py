"""The log at scale on a local 3-node cluster: PRM memory and restart time against the log's size.

One cluster grows through the given sizes (entries of about ``tally_bytes`` each). At each size
it prints, for a follower: the RSS of its PRM process and of its worker processes, the log's
value bytes, and the time from SIGKILL to a restarted PRM that serves the whole log (``print``
answers with every entry). The first size (0 by default) is the same-run baseline, and the
growth per MiB of log is against it. The issue's goal is memory flat in the log's size (values
stay in SQLite: paxmr/paxos/log.py) and a restart that does not decode the log (summaries are
stored with it: paxmr/catalog.py); the figures say how close the PRM is.

Tallies have few, long words (cheap to parse) unless ``word_bytes`` is small: real tallies of
many short words cost much more CPU to decode at start-up than these.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from paxmr import control, local
from paxmr.settings import Settings, load

_MIB = 1 << 20


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _tally(path: Path, size: int, word_bytes: int, tag: int) -> None:
    width = max(word_bytes - 12, 1)
    words = sorted(
        b"t%03dw%07d" % (tag % 1000, i) + b"x" * width for i in range(size // (width + 14))
    )
    path.write_bytes(b"paxmr-tally 1\n" + b"".join(w + b"\t1\n" for w in words))


def _prm_pid(root: Path, node: int) -> int:
    return next(s.pid for s in local.load_state(root) if s.node == node and s.name == "prm")


def _leader(nodes: list[Settings], timeout: float = 60.0) -> Settings:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in nodes:
            with contextlib.suppress(control.RemoteError, OSError):
                if control.call(s.prm_socket, "status", timeout=5.0)["role"] == "leader":
                    return s
        time.sleep(0.05)
    raise RuntimeError("no leader elected")


def _replicate(settings: Settings, file: str) -> None:
    """One entry, retried with its request id while the outcome is unknown or the node busy."""
    rid = uuid.uuid4().hex
    for _ in range(50):
        try:
            control.call(settings.prm_socket, "replicate", {"file": file, "request_id": rid},
                         timeout=120.0)  # fmt: skip
        except control.RemoteError as exc:
            if exc.code not in {"busy", "no_quorum", "interrupted"}:
                raise
            time.sleep(0.2)
        else:
            return
    raise RuntimeError(f"replicate {file} did not land")


def _answering(settings: Settings, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(control.ServiceDown, control.RemoteError, OSError):
            control.call(settings.prm_socket, "status", timeout=30.0)
            return
        time.sleep(0.02)
    raise RuntimeError(f"node {settings.node_id} did not start")


def _serving(settings: Settings, entries: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(control.ServiceDown, control.RemoteError, OSError):
            log = control.call(settings.prm_socket, "print", timeout=30.0)
            if len(log["entries"]) >= entries:
                return
        time.sleep(0.02)
    raise RuntimeError(f"node {settings.node_id} did not serve {entries} entries")


def _measure(root: Path, nodes: list[Settings], entries: int) -> dict[str, Any]:
    leader = _leader(nodes)
    follower = next(s for s in nodes if s.node_id != leader.node_id)
    _serving(follower, entries)
    time.sleep(1.0)  # let the workers finish and the heap settle
    pid = _prm_pid(root, follower.node_id)
    status = control.call(follower.prm_socket, "status", timeout=30.0)
    prm_rss = _rss_kib(pid)
    workers_rss = sum(_rss_kib(c) for c in _children(pid))
    # Restart to serving: SIGKILL the follower's PRM, start it again, wait for the whole log.
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    with contextlib.suppress(control.ServiceDown, TimeoutError):  # slower than local's wait
        local.restart(root, follower.node_id, "prm")
    _answering(follower)
    ready = time.perf_counter() - killed
    _serving(follower, entries)
    serving = time.perf_counter() - killed
    return {
        "entries": entries,
        "log_mib": round(status["log"]["bytes"] / _MIB, 1),
        "prm_rss_mib": round(prm_rss / 1024, 1),
        "workers_rss_mib": round(workers_rss / 1024, 1),
        "restart_ready_s": round(ready, 2),
        "restart_serving_s": round(serving, 2),
    }


def run(sizes: list[int], tally_bytes: int, word_bytes: int, clients: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="paxmr-bench-scale-") as tmp:
        root = Path(tmp)
        local.up(root, nodes=3, mappers=1)
        try:
            nodes = [load(local.config_path(root, n)) for n in (1, 2, 3)]
            have = 0
            for size in sorted(sizes):
                leader = _leader(nodes)
                names = []
                for i in range(clients):
                    name = f"scale{i}_reduced"
                    _tally(leader.data_dir / name, tally_bytes, word_bytes, i)
                    names.append(name)
                jobs = [(leader, names[i % clients]) for i in range(have, size)]
                with ThreadPoolExecutor(clients) as pool:
                    list(pool.map(lambda job: _replicate(*job), jobs))
                have = max(have, size)
                rows.append(_measure(root, nodes, have))
        finally:
            local.down(root)
    base = rows[0]
    for row in rows:
        grown = row["log_mib"] - base["log_mib"]
        row["prm_mib_per_log_mib"] = (
            round((row["prm_rss_mib"] - base["prm_rss_mib"]) / grown, 2) if grown > 0 else None
        )
    return {"tally_bytes": tally_bytes, "word_bytes": word_bytes, "baseline": base, "rows": rows}
