"""A whole cluster on this machine: every node's services as background processes.

Layout under DIR: ``ca/`` (the cluster's CA: ``ca.pem``, ``ca.key``), ``cluster.json`` (what
runs), ``founded`` (the founding members were initialized), ``up.lock`` (one ``up`` at a time)
and per node ``nK/paxmr.toml``, ``nK/tls`` (``peer-ca``, ``peer-cert``, ``peer-key``: see
paxmr/pki.py), ``nK/data``, ``nK/state``, ``nK/run`` (sockets) and ``nK/logs/<service>.log``
(one JSON object per line).

``up`` is idempotent: it starts whatever is not running and keeps the ports of the existing
configuration. Founding is explicit and happens once: a node whose ``prm.db`` is lost later starts
uninitialized and does not vote until it has caught up, as with Ansible.
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from paxmr import control, pki
from paxmr.settings import Settings
from paxmr.settings import load as load_settings

STATE = "cluster.json"
FOUNDED = "founded"


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


def _write_config(root: Path, node: int, ports: list[int], mappers: int, metrics: int) -> Path:
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
        f"metrics_port = {metrics}\n"
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


def existing_nodes(root: Path) -> int:
    """How many nodes the cluster in ``root`` has (0: none yet), added ones included."""
    count = 0
    while config_path(root, count + 1).is_file():
        count += 1
    return count


def add(root: Path) -> tuple[int, str]:
    """A new node for the cluster in ``root``: its configuration (naming every node), its key and
    certificate from the cluster's CA, and its services started. It founds nothing and is no
    member until ``paxmr member add ID ADDRESS`` (printed as the next step) makes it one."""
    have = existing_nodes(root)
    if not have:
        raise RuntimeError(f"no local cluster in {root}: `paxmr local up` creates one")
    first = load_settings(config_path(root, 1))
    ports = [load_settings(config_path(root, n)).me.port for n in range(1, have + 1)]
    port, metrics = _free_ports(2)
    node = have + 1
    _write_config(root, node, [*ports, port], first.mappers, metrics)
    pki.issue(root / "ca", node, root / f"n{node}" / "tls")
    up(root)
    return node, f"127.0.0.1:{port}"


def up(root: Path, nodes: int | None = None, mappers: int | None = None) -> list[Path]:
    """Start whatever of the cluster in ``root`` is not running; create the cluster if new.

    An existing cluster keeps its configuration (members, ports, mappers); asking for another
    size is an error. Only a new cluster's nodes are initialized as founding members.
    """
    with _alone(root):
        return _up(root, nodes, mappers)


@contextlib.contextmanager
def _alone(root: Path) -> Iterator[None]:
    """Hold `root`'s lock (flock on ``up.lock``, dropped by the kernel if this process dies): a
    second `up` at once (two terminals) waits for the first, then finds everything running.
    Without it both founded the nodes, each with its own cluster id (a split cluster that never
    elects), and each recorded only its own services in cluster.json."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(root / "up.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _up(root: Path, nodes: int | None, mappers: int | None) -> list[Path]:
    configs = _configure(root, nodes, mappers)
    _compile_package()
    running = {(s.node, s.name): s for s in load_state(root) if _alive(s.pid)}
    services: list[Service] = []
    started: list[Service] = []
    try:
        for node, cfg in enumerate(configs, start=1):
            settings = load_settings(cfg)
            for name, argv, sock in _argvs(settings, cfg):
                old = running.get((node, name))
                if old is None:
                    old = _spawn(root, node, name, argv, sock)
                    started.append(old)
                services.append(old)
        _save(root, services)
        for s in started:
            wait_ready(Path(s.socket))
    except BaseException:
        _stop(started)
        _save(root, [s for s in services if s not in started])
        raise
    return configs


def _compile_package() -> None:
    """Compile paxmr's modules to bytecode, as pip does when it installs the package: services
    started here then import them as an installed node's do. Where bytecode is not written on
    import (PYTHONDONTWRITEBYTECODE, a source checkout), each start would compile all of them
    again, about 0.1 s of CPU per PRM start (`paxmr bench scale`). Quietly does nothing where
    the package is read-only (an installed one was compiled by pip)."""
    compileall.compile_dir(Path(__file__).parent, quiet=2)


def _configure(root: Path, nodes: int | None, mappers: int | None) -> list[Path]:
    """The nodes' config files: the existing ones, else new ones (and the founding members)."""
    have = existing_nodes(root)
    if have and nodes is not None and nodes != have:
        raise RuntimeError(
            f"the local cluster in {root} has {have} nodes, not {nodes}; `paxmr local down` and"
            " remove the directory for a new one"
        )
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if have:
        configs = [config_path(root, n) for n in range(1, have + 1)]
    else:
        count = nodes or 3
        ports = _free_ports(2 * count)  # peer ports, then metrics ports
        configs = [
            _write_config(root, n, ports[:count], mappers or 2, ports[count + n - 1])
            for n in range(1, count + 1)
        ]
    # The CA and each node's key and certificate: created once, reused (keys repaired to 0600),
    # issued again when missing, from another CA or near their end.
    for n in range(1, len(configs) + 1):
        pki.issue(root / "ca", n, root / f"n{n}" / "tls")
    if not (root / FOUNDED).exists():
        # Imported here: the CLI imports this module for every command (`paxmr local` is one of
        # its groups), and the PRM's own modules would double what `paxmr status` imports.
        from paxmr.services import prm  # noqa: PLC0415

        cluster_id = uuid.uuid4().hex
        for cfg in configs:
            settings = load_settings(cfg)
            if not prm.db_path(settings).exists():
                prm.initialize(settings, cluster_id)  # founding members vote from the start
        (root / FOUNDED).touch()
    return configs


def log_path(root: Path, node: int, name: str) -> Path:
    """The log a service of the local cluster writes (one JSON object per line)."""
    return root / f"n{node}" / "logs" / f"{name}.log"


def _spawn(root: Path, node: int, name: str, argv: list[str], sock: Path) -> Service:
    path = log_path(root, node, name)
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


def restart(root: Path, node: int | None = None, name: str | None = None) -> list[Service]:
    """Stop (if running) and start again the matching services, and wait until they answer.

    No ``node``: every node; no ``name``: every service of the node(s).
    """
    services = load_state(root)
    chosen = [
        s for s in services if (node is None or s.node == node) and (name is None or s.name == name)
    ]
    if not chosen:
        known = sorted({s.name for s in services})
        raise RuntimeError(
            f"no service {name or '*'} on node {node or '*'} in {root}"
            + (f" (services: {', '.join(known)})" if known else ": is the cluster up?")
        )
    _stop(chosen)
    fresh = {id(s): _spawn(root, s.node, s.name, s.argv, Path(s.socket)) for s in chosen}
    _save(root, [fresh.get(id(s), s) for s in services])
    for new in fresh.values():
        wait_ready(Path(new.socket))
    return list(fresh.values())


def _save(root: Path, services: list[Service]) -> None:
    tmp = root / f".{STATE}.tmp"
    tmp.write_text(json.dumps({"services": [asdict(s) for s in services]}, indent=1))
    tmp.replace(root / STATE)


def down(root: Path, timeout: float = 10.0) -> int:
    """SIGTERM every service, SIGKILL what has not exited by ``timeout``; returns how many ran."""
    count = _stop(load_state(root), timeout)
    (root / STATE).unlink(missing_ok=True)
    return count


def _stop(services: list[Service], timeout: float = 10.0) -> int:
    running = [s for s in services if _alive(s.pid)]
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
            gone = time.monotonic() + 5.0
            while _alive(s.pid) and time.monotonic() < gone:
                time.sleep(0.01)
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


def nodes(root: Path) -> list[dict[str, object]]:
    """Each node's replica as its PRM reports it (``status`` op), or why it could not."""
    rows: list[dict[str, object]] = []
    for n in range(1, existing_nodes(root) + 1):
        settings = load_settings(config_path(root, n))
        row: dict[str, object] = {"node": n, "port": settings.me.port,
                                  "metrics_port": settings.metrics_port}  # fmt: skip
        try:
            row["prm"] = control.call(settings.prm_socket, "status", timeout=5.0)
        except control.ServiceDown:
            row["error"] = "prm not running"
        except control.PermissionDenied:
            row["error"] = "permission denied"
        except (control.RemoteError, OSError) as exc:
            row["error"] = f"prm not answering: {exc}"
        rows.append(row)
    return rows
