"""How long commits pause while a member is added and while the leader is removed, against the
longest gap between commits in a window of the same length without a change (same run)."""

from __future__ import annotations

import bisect
import contextlib
import itertools
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Self

from paxmr import control, local
from paxmr.settings import Settings, load
from paxmr.wordcount import tally


class _Load:
    """One client per founding node, each replicating one entry after another."""

    def __init__(self, nodes: list[Settings], file: str) -> None:
        self.done: list[float] = []  # commit times, all clients
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(s, file)) for s in nodes]

    def _run(self, settings: Settings, file: str) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(control.RemoteError, control.ServiceDown, OSError):
                args = {"file": file, "request_id": uuid.uuid4().hex}
                control.call(settings.prm_socket, "replicate", args, timeout=20)
                with self._lock:
                    self.done.append(time.monotonic())
                continue
            time.sleep(0.05)  # a removed node refuses at once: do not spin

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def window(self, start: float, end: float) -> dict[str, float]:
        with self._lock:
            done = sorted(self.done)
        inside = done[bisect.bisect_left(done, start) : bisect.bisect_right(done, end)]
        edges = [start, *inside, end]
        pause = max(b - a for a, b in itertools.pairwise(edges))
        return {
            "s": round(end - start, 2),
            "commits": len(inside),
            "longest_pause_ms": round(pause * 1000, 1),
        }


def _leader(nodes: list[Settings]) -> Settings:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for s in nodes:
            with contextlib.suppress(control.RemoteError, control.ServiceDown, OSError):
                if control.call(s.prm_socket, "status", timeout=5)["role"] == "leader":
                    return s
        time.sleep(0.05)
    raise RuntimeError("no leader elected")


def _all_voting(nodes: list[Settings]) -> bool:
    return all(control.call(s.prm_socket, "status", timeout=5)["voting"] for s in nodes)


def run(baseline_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="paxmr-bench-") as tmp:
        root = Path(tmp)
        local.up(root, nodes=3, mappers=1)
        try:
            nodes = [load(local.config_path(root, n)) for n in (1, 2, 3)]
            for s in nodes:
                tally.write(s.data_dir / "small_reduced", [(b"alpha", 3), (b"beta", 2)])
            _leader(nodes)
            with _Load(nodes, "small_reduced") as work:
                time.sleep(1.0)  # warm up
                start = time.monotonic()
                time.sleep(baseline_s)
                baseline = work.window(start, time.monotonic())

                # Add: a learner that catches up, becomes a voter and fences (it joined without
                # state), which takes the leadership once.
                start = time.monotonic()
                node, address = local.add(root)
                added = load(local.config_path(root, node))
                result = control.call(
                    nodes[0].prm_socket,
                    "member_add",
                    {"node": node, "address": address, "wait": 60.0},
                    timeout=90,
                )
                if result["role"] != "voter":
                    raise RuntimeError(f"node {node} did not become a voter: {result}")
                grown = [*nodes, added]
                while not _all_voting(grown):
                    time.sleep(0.05)
                time.sleep(1.0)
                add = work.window(start, time.monotonic())

                # Remove the leader, asked on the leader.
                leader = _leader(grown)
                start = time.monotonic()
                control.call(
                    leader.prm_socket, "member_remove", {"node": leader.node_id}, timeout=60
                )
                rest = [s for s in grown if s is not leader]
                _leader(rest)
                time.sleep(1.0)
                remove = work.window(start, time.monotonic())
        finally:
            local.down(root)
    return {
        "baseline": baseline,
        "add_member": add,
        "remove_leader": {**remove, "removed": leader.node_id},
    }
