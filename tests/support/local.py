"""A real local cluster on loopback (``paxmr.local``), and helpers to drive and observe it.

Every service is a real process; the CLI runs as a real ``paxmr`` subprocess; faults are real
signals. Two ways to start one:

- ``running_cluster`` / ``start`` run ``local.up`` in this process, so the services are this
  process's children: a SIGKILLed PRM is reaped here and started again with ``local.restart``.
  Shorter protocol timers (``TIMING``) reach the services through ``service_env`` and every CLI
  call through ``Node.env``.
- ``start_cluster`` runs ``paxmr local up`` like an operator would, with default timers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from unittest import mock

from paxmr import control, local
from paxmr import settings as settings_mod
from paxmr.settings import Settings
from tests.support.cli import CLI_TIMEOUT, PAXMR, Arg, clean_env, paxmr
from tests.support.wait import CONVERGE_S, wait_until

# The PRM refuses a replicate it could not get chosen after this long (exit code 5 for no quorum).
REPLICATE_TIMEOUT = 3.0
TIMING = {"PAXMR_TIMING__REPLICATE_TIMEOUT": str(REPLICATE_TIMEOUT)}

# What a control call may raise while a service is down, restarting or not serving yet.
UNREACHABLE = (control.ServiceDown, control.RemoteError, OSError)


@contextlib.contextmanager
def service_env(extra: Mapping[str, str] | None = None) -> Iterator[None]:
    """Services spawned by ``local`` in this block inherit the test timers (and nothing else)."""
    with mock.patch.dict(os.environ, clean_env({**TIMING, **(extra or {})}), clear=True):
        yield


@dataclass(frozen=True)
class Node:
    id: int
    root: Path
    env: Mapping[str, str] = field(default_factory=dict)  # added to every CLI call's environment

    @property
    def config(self) -> Path:
        return local.config_path(self.root, self.id)

    @property
    def settings(self) -> Settings:
        # Read fresh: `local up` writes new peer ports on every start.
        return settings_mod.load(self.config)

    @property
    def data(self) -> Path:
        return self.root / f"n{self.id}" / "data"

    @property
    def prm_log(self) -> Path:
        return self.root / f"n{self.id}" / "logs" / "prm.log"

    def cli(
        self,
        *args: Arg,
        input: str | None = None,  # noqa: A002 - mirrors subprocess.run
        prefix: tuple[str, ...] = (),
        timeout: float = CLI_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        return paxmr(
            "-c", self.config, *args, input=input, env=clean_env(self.env), prefix=prefix,
            timeout=timeout,
        )  # fmt: skip

    def cli_json(self, *args: Arg) -> Any:
        done = self.cli("-o", "json", *args)
        assert done.returncode == 0, f"node {self.id}: paxmr {' '.join(map(str, args))}: {done}"
        return json.loads(done.stdout)

    def status_report(self) -> Any:
        """``paxmr -o json status``: exit 0 if healthy, 5 if the replica answers but is not."""
        done = self.cli("-o", "json", "status")
        assert done.returncode in {0, 5}, f"node {self.id}: paxmr status: {done}"
        return json.loads(done.stdout)

    def popen(self, *args: Arg) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(PAXMR), "-c", str(self.config), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(self.env),
        )

    # In-process control calls, for polling and for many requests at once (cheap, no startup).

    def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
        return control.call(self.settings.prm_socket, op, args, timeout=timeout)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status", timeout=10.0)
        return result

    def replicate(self, file: str, request_id: str | None = None) -> dict[str, Any]:
        args = {"file": file, "request_id": request_id or uuid.uuid4().hex}
        result: dict[str, Any] = self.call("replicate", args, timeout=REPLICATE_TIMEOUT * 3)
        return result

    def prm_pid(self) -> int:
        return next(
            s.pid for s in local.load_state(self.root) if s.node == self.id and s.name == "prm"
        )

    def log_events(self, *events: str, after: int = 0) -> list[dict[str, Any]]:
        """The PRM's structured log lines (``<N>{json}``) with these event names, written after
        byte ``after`` of its log."""
        found: list[dict[str, Any]] = []
        if not self.prm_log.exists():
            return found
        with self.prm_log.open("rb") as f:
            f.seek(after)
            text = f.read().decode(errors="replace")
        for line in text.splitlines():
            start = line.find("{")
            if start < 0:
                continue
            try:
                obj = json.loads(line[start:])
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") in events:
                found.append(obj)
        return found


@dataclass(frozen=True)
class Cluster:
    root: Path
    nodes: list[Node]
    mappers: int

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]

    def statuses(self) -> dict[int, dict[str, Any]]:
        return {n.id: n.status() for n in self.nodes}

    def leader(self, timeout: float = CONVERGE_S, exclude: int | None = None) -> int:
        """The node that every live, active node agrees leads (polls until one does)."""
        seen: set[tuple[Any, Any]] = set()

        def agreed() -> int | None:
            seen.clear()
            for n in self.nodes:
                if n.id == exclude:
                    continue
                with contextlib.suppress(*UNREACHABLE):
                    st = n.status()
                    if not st["stopped"]:
                        seen.add((st["leader"], st["role"] == "leader" and n.id))
            leaders = {leader for leader, _ in seen}
            claimers = {me for _, me in seen if me}
            if len(leaders) == 1 and None not in leaders and claimers == leaders:
                return int(leaders.pop())
            return None

        return wait_until(agreed, lambda: f"an agreed leader (seen {seen})", timeout=timeout)

    def converged(self, timeout: float = CONVERGE_S, nodes: list[Node] | None = None) -> str:
        """Wait until the nodes hold the same log (digest and entry count); returns the digest."""
        nodes = nodes or self.nodes

        seen: set[tuple[Any, Any]] = set()

        def same() -> bool:
            seen.clear()
            seen.update((st["digest"], st["entries"]) for st in [n.status() for n in nodes])
            return len(seen) == 1

        wait_until(
            same, lambda: f"the logs converge (seen {seen})", timeout=timeout, retry_on=UNREACHABLE
        )
        return str(next(iter(seen))[0])

    def heal(self) -> None:
        """Undo what a failed test may have left: dead PRMs restarted, stopped PRMs resumed."""
        for n in self.nodes:
            if not alive(n.prm_pid()):
                with service_env():
                    local.restart(self.root, n.id, "prm")
            if n.status()["stopped"]:
                n.call("resume")


def alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sigkill(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is gone (reaped here if it is this process's child)."""
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # our child (local.up ran in this process): reap it now
    wait_until(lambda: not alive(pid), f"pid {pid} gone after SIGKILL", timeout=10, interval=0.02)


def start(
    root: Path, nodes: int = 3, mappers: int = 1, env: Mapping[str, str] | None = None
) -> Cluster:
    """``local.up`` in this process, with the test timers (plus ``env``) for the services."""
    with service_env(env):
        local.up(root, nodes, mappers)
    return Cluster(root, [Node(i, root, TIMING) for i in range(1, nodes + 1)], mappers)


@contextlib.contextmanager
def running_cluster(
    mappers: int = 1,
    nodes: int = 3,
    env: Mapping[str, str] | None = None,
    *,
    tallies: bool = False,
) -> Iterator[Cluster]:
    """A started cluster with a leader, in a temporary directory removed afterwards;
    ``tallies``: with ``small_tally`` written on every node."""
    root = Path(tempfile.mkdtemp(prefix="paxmr-cluster-"))
    try:
        cluster = start(root, nodes, mappers, env)
        cluster.leader()
        for n in cluster.nodes if tallies else []:
            small_tally(n)
        yield cluster
    finally:
        local.down(root)
        shutil.rmtree(root, ignore_errors=True)


def start_cluster(root: Path, nodes: int, mappers: int = 2) -> Cluster:
    """``paxmr local up`` as an operator runs it: default timers, services not our children."""
    up = paxmr("-o", "json", "local", "up", "--nodes", nodes, "--mappers", mappers, "--dir", root)
    assert up.returncode == 0, up.stderr
    configs = [Path(c) for c in json.loads(up.stdout)["configs"]]
    cluster = Cluster(
        root.resolve(), [Node(i, root.resolve()) for i in range(1, nodes + 1)], mappers
    )
    assert [n.config for n in cluster.nodes] == configs, configs
    return cluster


def stop_cluster(root: Path) -> subprocess.CompletedProcess[str]:
    return paxmr("local", "down", "--dir", root)


def small_tally(node: Node, name: str = "small_reduced") -> str:
    """A valid reduced tally in ``node``'s data directory (as reduce writes them)."""
    (node.data / name).write_bytes(b"paxmr-tally 1\nalpha\t3\nbeta\t2\ngamma\t1\n")
    return name


STREAM_FILE = "stream_reduced"


class Stream:
    """Clients replicating one after another on the given nodes until stopped; records what
    was acknowledged (request id: position) and what failed."""

    def __init__(self, nodes: list[Node], clients_per_node: int = 2) -> None:
        for node in nodes:
            small_tally(node, STREAM_FILE)
        self.acked: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True)
            for n in nodes
            for _ in range(clients_per_node)
        ]

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(REPLICATE_TIMEOUT * 4)

    def _run(self, node: Node) -> None:
        while not self._stop.is_set():
            rid = uuid.uuid4().hex
            try:
                result = node.replicate(STREAM_FILE, rid)
            except (control.ServiceDown, control.RemoteError, OSError) as exc:
                with self._lock:
                    self.failures.append(f"n{node.id}: {exc}")
                time.sleep(0.05)
                continue
            with self._lock:
                self.acked[rid] = result["position"]

    def wait_for(self, count: int, timeout: float = CONVERGE_S) -> None:
        target = len(self.acked) + count
        wait_until(
            lambda: len(self.acked) >= target,
            lambda: f"the stream goes on (failures: {self.failures[-5:]})",
            timeout=timeout,
            interval=0.02,
        )


def all_acked_everywhere(cluster: Cluster, acked: dict[str, int]) -> None:
    """Every node holds one log, each request once, each acknowledged one where it was told."""
    digest = cluster.converged()
    for n in cluster.nodes:
        log = n.call("print")
        assert log["digest"] == digest
        ids = [e["request_id"] for e in log["entries"]]
        assert len(ids) == len(set(ids)), f"node {n.id}: a request id landed twice"
        assert [e["position"] for e in log["entries"]] == list(range(len(ids)))
        where = {rid: pos for pos, rid in enumerate(ids)}
        lost = {rid for rid in acked if rid not in where}
        assert not lost, f"node {n.id} lost {len(lost)} acknowledged replicates"
        moved = {rid for rid, pos in acked.items() if where[rid] != pos}
        assert not moved, f"node {n.id}: entries not at their acknowledged position"
