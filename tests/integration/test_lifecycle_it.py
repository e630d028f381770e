"""A service process's life: READY=1 once it serves, clean SIGTERM, restart after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from paxmr import control
from paxmr.local import wait_ready
from paxmr.wordcount import tally
from tests.support.cli import PAXMR, clean_env, paxmr
from tests.support.local import Cluster

pytestmark = pytest.mark.integration

READY_TIMEOUT = 20


@dataclass
class Solo:
    """One node's config with one mapper, no cluster around it; services started by the test."""

    root: Path
    config: Path
    notify: socket.socket

    @property
    def data(self) -> Path:
        return self.root / "data"

    def socket_of(self, service: str) -> Path:
        return self.root / "run" / ("reducer.sock" if service == "reducer" else "mapper-1.sock")

    def start(self, service: str) -> subprocess.Popen[bytes]:
        argv = ["serve", "reducer"] if service == "reducer" else ["serve", "mapper", "--id", "1"]
        env = clean_env({"NOTIFY_SOCKET": self.notify.getsockname()})
        return subprocess.Popen(
            [str(PAXMR), "-c", str(self.config), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )

    def expect_notify(self, message: bytes) -> None:
        assert self.notify.recv(4096) == message


@pytest.fixture
def solo() -> Iterator[Solo]:
    root = Path(tempfile.mkdtemp(prefix="paxmr-solo-"))  # short: socket paths have a length limit
    (root / "data").mkdir()
    config = root / "paxmr.toml"
    config.write_text(
        f'mappers = 1\ndata_dir = "{root / "data"}"\nruntime_dir = "{root / "run"}"\n'
        f'state_dir = "{root / "state"}"\n'
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(root / "notify.sock"))
    notify.settimeout(READY_TIMEOUT)
    try:
        yield Solo(root, config, notify)
    finally:
        notify.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        if p.stdout:
            p.stdout.close()


_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def log_lines(raw: bytes) -> list[tuple[int, dict[str, object]]]:
    """Plain JSON lines (stdout is a pipe, not the journal: no ``<N>`` prefix), with the
    syslog priority their level maps to."""
    out = []
    for line in raw.decode().splitlines():
        assert line.startswith("{"), line
        obj = json.loads(line)
        out.append((_PRIORITY[obj["level"]], obj))
    return out


@pytest.mark.parametrize(
    ("service", "sig"),
    [("mapper", signal.SIGTERM), ("reducer", signal.SIGTERM), ("mapper", signal.SIGINT)],
    ids=["mapper-TERM", "reducer-TERM", "mapper-INT"],
)
def test_ready_then_clean_stop(
    solo: Solo, procs: list[subprocess.Popen[bytes]], service: str, sig: signal.Signals
) -> None:
    proc = solo.start(service)
    procs.append(proc)
    solo.expect_notify(b"READY=1")
    # READY=1 means serving: the very first call must succeed, no retry.
    role = control.call(solo.socket_of(service), "status", timeout=10)["role"]
    assert role == service
    proc.send_signal(sig)
    solo.expect_notify(b"STOPPING=1")
    assert proc.wait(timeout=15) == 0
    assert proc.stdout is not None
    lines = log_lines(proc.stdout.read())
    events = [obj["event"] for _, obj in lines]
    assert events[0] == "ready"
    assert events[-1] == "stopped"
    priority, last = lines[-1]
    assert priority == 6
    assert last["role"] == ("reducer" if service == "reducer" else "mapper-1")
    assert last["node"] == 1


def test_restart_after_sigkill_with_stale_socket(
    solo: Solo, procs: list[subprocess.Popen[bytes]]
) -> None:
    (solo.data / "after_kill.txt").write_bytes(b"alive again alive\n")
    for service in ("mapper", "reducer"):
        procs.append(solo.start(service))
        solo.expect_notify(b"READY=1")
    mapper = procs[0]
    mapper.kill()
    mapper.wait(timeout=10)
    sock = solo.socket_of("mapper")
    assert sock.exists()  # the stale socket file a killed process leaves behind
    down = paxmr("-c", solo.config, "map", "after_kill.txt")
    assert down.returncode == 3, down.stderr
    assert "service not running" in down.stderr

    procs.append(solo.start("mapper"))
    solo.expect_notify(b"READY=1")
    result = paxmr("-c", solo.config, "map", "after_kill.txt")
    assert result.returncode == 0, result.stderr
    reduced = paxmr("-c", solo.config, "reduce", "after_kill.txt_I_1")
    assert reduced.returncode == 0, reduced.stderr
    assert tally.read(solo.data / "after_kill.txt_reduced") == {b"alive": 2, b"again": 1}


def test_no_notify_socket_still_serves(solo: Solo, procs: list[subprocess.Popen[bytes]]) -> None:
    proc = subprocess.Popen(
        [str(PAXMR), "-c", str(solo.config), "serve", "mapper", "--id", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
    )
    procs.append(proc)
    wait_ready(solo.socket_of("mapper"), timeout=READY_TIMEOUT)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_settings_from_environment_reach_the_service(
    solo: Solo, procs: list[subprocess.Popen[bytes]]
) -> None:
    env = clean_env(
        {"NOTIFY_SOCKET": solo.notify.getsockname(), "PAXMR_LIMITS__CONTROL_LINE_BYTES": "2048"}
    )
    proc = subprocess.Popen(
        [str(PAXMR), "-c", str(solo.config), "serve", "mapper", "--id", "1"],
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    procs.append(proc)
    solo.expect_notify(b"READY=1")
    path = solo.socket_of("mapper")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b'{"op": "status", "pad": "' + b"x" * 4096 + b'"}\n')
        reply = json.loads(sock.makefile("rb").readline())
    assert reply["ok"] is False
    assert reply["error"]["code"] == "too_large"
    assert "2048" in reply["error"]["message"]
    assert control.call(path, "status", timeout=10)["role"] == "mapper"


def test_local_mode_keeps_state_data_and_logs_private(cluster: Cluster) -> None:
    for node in cluster.nodes:
        home = node.config.parent
        for sub in ("data", "state", "logs"):
            assert (home / sub).stat().st_mode & 0o777 == 0o700, sub
        for log in (home / "logs").iterdir():
            assert log.stat().st_mode & 0o077 == 0, log
