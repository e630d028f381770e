"""A whole cluster on this machine: every node's services as background processes.

Layout under DIR: ``ca/`` (the cluster's CA: ``ca.pem``, ``ca.key``), ``cluster.json`` (what
runs) and per node ``nK/paxmr.toml``, ``nK/tls`` (``peer-ca``, ``peer-cert``, ``peer-key``: see
paxmr/pki.py), ``nK/data``, ``nK/state``, ``nK/run`` (sockets) and ``nK/logs/<service>.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from paxmr import control, pki
from paxmr.services import prm
from paxmr.settings import Settings
from paxmr.settings import load as load_settings

STATE = "cluster.json"


@dataclass(frozen=True)
class Service:
    node: int
    name: str
    pid: int
    socket: str
    argv: list[str]


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def config_path(root: Path, node: int) -> Path:
    return root / f"n{node}" / "paxmr.toml"


def _write_config(root: Path, node: int, ports: list[int], mappers: int) -> Path:
    home = root / f"n{node}"
    for sub in ("data", "state", "run", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    for private in ("data", "state", "logs"):  # the sockets in run/ guard themselves (0660)
        (home / private).chmod(0o700)
    members = "".join(
        f'\n[[nodes]]\nid = {i}\nhost = "127.0.0.1"\nport = {port}\n'
        for i, port in enumerate(ports, start=1)
    )
    path = config_path(root, node)
    path.write_text(
        f"node_id = {node}\n"
        f"mappers = {mappers}\n"
        f'data_dir = "{home / "data"}"\n'
        f'state_dir = "{home / "state"}"\n'
        f'runtime_dir = "{home / "run"}"\n'
        f'tls_dir = "{home / "tls"}"\n{members}'
    )
    return path


def _argvs(settings: Settings, config: Path) -> list[tuple[str, list[str], Path]]:
    base = [sys.executable, "-m", "paxmr", "-c", str(config)]
    jobs = [
        (f"mapper-{i}", [*base, "serve", "mapper", "--id", str(i)], settings.mapper_socket(i))
        for i in range(1, settings.mappers + 1)
    ]
    jobs.append(("reducer", [*base, "serve", "reducer"], settings.reducer_socket))
    jobs.append(("prm", [*base, "serve", "prm"], settings.prm_socket))
    return jobs


def wait_ready(path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            control.call(path, "status", timeout=2.0)
        except (control.ServiceDown, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


def load_state(root: Path) -> list[Service]:
    path = root / STATE
    if not path.is_file():
        return []
    return [Service(**s) for s in json.loads(path.read_text())["services"]]


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def up(root: Path, nodes: int, mappers: int = 2) -> list[Path]:
    """Start every node; refuses when a cluster already runs in ``root``."""
    if any(_alive(s.pid) for s in load_state(root)):
        raise RuntimeError(f"a local cluster already runs in {root}; `paxmr local down` first")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The CA and each node's key and certificate: created once, reused (keys repaired to 0600),
    # issued again when missing, from another CA or near their end.
    for n in range(1, nodes + 1):
        pki.issue(root / "ca", n, root / f"n{n}" / "tls")
    ports = _free_ports(nodes)
    configs = [_write_config(root, n, ports, mappers) for n in range(1, nodes + 1)]
    cluster_id = uuid.uuid4().hex
    services: list[Service] = []
    try:
        for node, cfg in enumerate(configs, start=1):
            settings = load_settings(cfg)
            if not prm.db_path(settings).exists():
                prm.initialize(settings, cluster_id)  # founding members vote from the start
            for name, argv, sock in _argvs(settings, cfg):
                services.append(_spawn(root, node, name, argv, sock))
        _save(root, services)
        for s in services:
            wait_ready(Path(s.socket))
    except BaseException:
        down(root)
        raise
    return configs


def _spawn(root: Path, node: int, name: str, argv: list[str], sock: Path) -> Service:
    path = root / f"n{node}" / "logs" / f"{name}.log"
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    with os.fdopen(os.open(path, flags, 0o600), "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Service(node, name, proc.pid, str(sock), argv)


def restart(root: Path, node: int, name: str) -> Service:
    """Start one service again (after it was killed), with the same arguments, and wait for it."""
    services = load_state(root)
    old = next((s for s in services if s.node == node and s.name == name), None)
    if old is None:
        raise RuntimeError(f"no service {name} on node {node} in {root}")
    if _alive(old.pid):
        raise RuntimeError(f"{name} on node {node} still runs as pid {old.pid}")
    new = _spawn(root, node, name, old.argv, Path(old.socket))
    _save(root, [new if s is old else s for s in services])
    wait_ready(Path(new.socket))
    return new


def _save(root: Path, services: list[Service]) -> None:
    tmp = root / f".{STATE}.tmp"
    tmp.write_text(json.dumps({"services": [asdict(s) for s in services]}, indent=1))
    tmp.replace(root / STATE)


def down(root: Path, timeout: float = 10.0) -> int:
    """SIGTERM every service, SIGKILL what has not exited by ``timeout``; returns how many ran."""
    running = [s for s in load_state(root) if _alive(s.pid)]
    for s in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(s.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for s in running:
        while _alive(s.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(s.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(s.pid, signal.SIGKILL)
    (root / STATE).unlink(missing_ok=True)
    return len(running)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # our own child when up and down run in one process


def status(root: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for s in load_state(root):
        alive = _alive(s.pid)
        answering = False
        if alive:
            with contextlib.suppress(control.ServiceDown, control.RemoteError, OSError):
                control.call(Path(s.socket), "status", timeout=2.0)
                answering = True
        rows.append({**asdict(s), "running": alive, "answering": answering})
    return rows
