"""A real local PRM cluster (``paxmr.local``) per module, and helpers to drive and observe it.

Every service is a real process on loopback; the CLI runs as a real ``paxmr`` subprocess; faults
are real signals. The cluster is started in-process with ``local.up`` so its services are this
process's children: a SIGKILLed PRM is reaped here and can be started again with
``local.restart``. Shorter protocol timers come from ``PAXMR_TIMING__*`` variables that the
services inherit and that every CLI call is given too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from paxmr import control, local
from paxmr import settings as settings_mod
from paxmr.settings import Settings

PAXMR = Path(sys.executable).with_name("paxmr")
CLI_TIMEOUT = 60.0

# The PRM refuses a replicate it could not get chosen after this long (exit code 5 for no quorum).
REPLICATE_TIMEOUT = 3.0
TIMING = {"PAXMR_TIMING__REPLICATE_TIMEOUT": str(REPLICATE_TIMEOUT)}

# Bounds for convergence on a loaded 2-core machine: generous, never a performance claim.
CONVERGE_S = 30.0


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without anything that steers paxmr, plus the test timers."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PAXMR_", "NOTIFY_", "WATCHDOG_", "LISTEN_"))
        and k != "CREDENTIALS_DIRECTORY"
    }
    env.update(TIMING)
    env.update(extra or {})
    return env


@contextlib.contextmanager
def service_env(extra: dict[str, str] | None = None) -> Iterator[None]:
    """Services spawned by ``local`` in this block inherit the test timers (and nothing else)."""
    with mock.patch.dict(os.environ, clean_env(extra), clear=True):
        yield


def paxmr(*args: str | Path, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PAXMR), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        check=False,
    )


@dataclass(frozen=True)
class Node:
    id: int
    root: Path

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
        self, *args: str | Path, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return paxmr("-c", self.config, *args, timeout=timeout)

    def cli_json(self, *args: str | Path) -> Any:
        done = self.cli("-o", "json", *args)
        assert done.returncode == 0, f"node {self.id}: paxmr {' '.join(map(str, args))}: {done}"
        return json.loads(done.stdout)

    def status_report(self) -> Any:
        """``paxmr -o json status``: exit 0 if healthy, 5 if the replica answers but is not."""
        done = self.cli("-o", "json", "status")
        assert done.returncode in {0, 5}, f"node {self.id}: paxmr status: {done}"
        return json.loads(done.stdout)

    def popen(self, *args: str | Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(PAXMR), "-c", str(self.config), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
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

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The PRM's structured log lines (``<N>{json}``) with this event name."""
        found = []
        if not self.prm_log.exists():
            return found
        for line in self.prm_log.read_text(errors="replace").splitlines():
            start = line.find("{")
            if start < 0:
                continue
            try:
                obj = json.loads(line[start:])
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") == event:
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
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            seen = set()
            for n in self.nodes:
                if n.id == exclude:
                    continue
                with contextlib.suppress(control.ServiceDown, control.RemoteError, OSError):
                    st = n.status()
                    if not st["stopped"]:
                        seen.add((st["leader"], st["role"] == "leader" and n.id))
            leaders = {leader for leader, _ in seen}
            claimers = {me for _, me in seen if me}
            if len(leaders) == 1 and None not in leaders and claimers == leaders:
                return leaders.pop()  # type: ignore[no-any-return]
            last = seen
            time.sleep(0.1)
        raise AssertionError(f"no agreed leader within {timeout} s: {last}")

    def converged(self, timeout: float = CONVERGE_S, nodes: list[Node] | None = None) -> str:
        """Wait until the nodes hold the same log (digest and entry count); returns the digest."""
        nodes = nodes or self.nodes
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                seen = {(st["digest"], st["entries"]) for st in (n.status() for n in nodes)}
            except (control.ServiceDown, control.RemoteError, OSError) as exc:
                last = f"a node did not answer: {exc!r}"
            else:
                if len(seen) == 1:
                    return next(iter(seen))[0]  # type: ignore[no-any-return]
                last = seen
            time.sleep(0.1)
        raise AssertionError(f"logs did not converge within {timeout} s: {last}")

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
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # our child (local.up ran in this process): reap it now
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
        time.sleep(0.02)


def start(
    root: Path, nodes: int = 3, mappers: int = 1, env: dict[str, str] | None = None
) -> Cluster:
    with service_env(env):
        local.up(root, nodes, mappers)
    return Cluster(root, [Node(i, root) for i in range(1, nodes + 1)], mappers)


@contextlib.contextmanager
def running_cluster(
    mappers: int = 1, nodes: int = 3, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="paxmr-cluster-"))
    try:
        cluster = start(root, nodes, mappers, env)
        cluster.leader()
        yield cluster
    finally:
        local.down(root)
        shutil.rmtree(root, ignore_errors=True)


def small_tally(node: Node, name: str = "small_reduced") -> str:
    """A valid reduced tally in ``node``'s data directory (as reduce writes them)."""
    (node.data / name).write_bytes(b"paxmr-tally 1\nalpha\t3\nbeta\t2\ngamma\t1\n")
    return name
