"""A local cluster an operator can heal, read the logs of, interrupt and drive from a shell
(issue 13). Everything runs the real ``paxmr`` command against real processes; the interactive
shell runs on a pseudo-terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from paxmr import local
from tests.support.cli import PAXMR, clean_env, ok, ok_json, paxmr
from tests.support.local import Cluster, sigkill, start_cluster, stop_cluster
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trio() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="paxmr-op-"))
    try:
        c = start_cluster(root, nodes=3)
        wait_until(
            lambda: all(n.cli("health").returncode == 0 for n in c.nodes), "a healthy cluster"
        )
        yield c
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def _pids(c: Cluster) -> dict[tuple[int, str], int]:
    return {(s.node, s.name): s.pid for s in local.load_state(c.root)}


def _configs(c: Cluster) -> list[str]:
    return [n.config.read_text() for n in c.nodes]


def test_local_up_starts_what_is_down_and_keeps_ports(trio: Cluster) -> None:
    before, configs = _pids(trio), _configs(trio)
    sigkill(before[2, "prm"])
    sigkill(before[3, "mapper-1"])
    status = paxmr("local", "status", "--dir", trio.root)
    assert status.returncode == 3, status
    assert "n2 prm: dead" in status.stdout
    assert "n3 mapper-1: dead" in status.stdout
    ok(paxmr("local", "up", "--dir", trio.root))
    after = _pids(trio)
    restarted = {k for k in before if after[k] != before[k]}
    assert restarted == {(2, "prm"), (3, "mapper-1")}
    assert _configs(trio) == configs  # same members, same peer and metrics ports
    wait_until(lambda: paxmr("local", "status", "--dir", trio.root).returncode == 0, "all healthy")
    table = ok_json(paxmr("-o", "json", "local", "status", "--dir", trio.root))
    assert {n["prm"]["digest"] for n in table["nodes"]} == {table["nodes"][0]["prm"]["digest"]}
    assert sorted(n["prm"]["role"] for n in table["nodes"]) == ["follower", "follower", "leader"]


def test_local_restart_one_service(trio: Cluster) -> None:
    before = _pids(trio)
    done = ok(paxmr("local", "restart", "--dir", trio.root, "--node", "1", "--service", "prm"))
    assert "restarted n1 prm" in done.stdout
    after = _pids(trio)
    assert {k for k in before if after[k] != before[k]} == {(1, "prm")}
    bad = paxmr("local", "restart", "--dir", trio.root, "--node", "1", "--service", "nope")
    assert bad.returncode == 1
    assert "no service nope on node 1" in bad.stderr
    wait_until(lambda: trio.nodes[0].cli("health").returncode == 0, "node 1 healthy again")


def test_a_node_that_lost_its_storage_rejoins_without_a_vote(trio: Cluster) -> None:
    """`local up` never founds an existing cluster again: the wiped node must catch up first.
    Its peers are stopped meanwhile, so it cannot catch up and stays visibly non-voting."""
    wiped, others = trio.nodes[1], [trio.nodes[0], trio.nodes[2]]
    wiped.cli("replicate", "nothing")  # whatever: the log may be empty, that is fine
    sigkill(_pids(trio)[2, "prm"])
    for f in (trio.root / "n2" / "state").glob("prm.db*"):
        f.unlink()
    start = wiped.prm_log.stat().st_size
    for n in others:
        ok(n.cli("stop"))
    try:
        ok(paxmr("local", "up", "--dir", trio.root))
        report = json.loads(wiped.cli("-o", "json", "health").stdout)
        assert report["prm"]["voting"] is False
        assert any("recovering" in p for p in report["problems"]), report
        assert wiped.cli("health").returncode == 5
        assert wiped.log_events("fence_started", after=start)
    finally:
        for n in others:
            n.cli("resume")
    wait_until(lambda: wiped.cli("health").returncode == 0, "the wiped node votes again")
    assert [e["level"] for e in wiped.log_events("fence_finished", after=start)] == ["info"]


def test_logs_of_a_local_node_are_json_lines_and_readable(trio: Cluster) -> None:
    node = trio.nodes[0]
    files = sorted((trio.root / "n1" / "logs").glob("*.log"))
    assert {f.name for f in files} >= {"prm.log", "reducer.log", "mapper-1.log"}
    for f in files:
        for line in f.read_text().splitlines():
            assert isinstance(json.loads(line), dict), (f, line)  # jq reads every line
    text = ok(node.cli("logs", "-n", "5"))
    assert "prm@1" in text.stdout
    assert "journalctl" not in text.stderr
    # The config named by PAXMR_CONFIG instead of -c (as README.md allows) is a local node too.
    via_env = ok(
        paxmr("logs", "-n", "5", env=clean_env({**node.env, "PAXMR_CONFIG": str(node.config)}))
    )
    assert "prm@1" in via_env.stdout
    raw = ok(node.cli("-o", "json", "logs", "-n", "3"))
    assert all(json.loads(line)["node"] == 1 for line in raw.stdout.splitlines())
    some = ok(paxmr("local", "logs", "--dir", trio.root, "--node", "2", "--service", "prm"))
    assert some.stdout.strip()
    assert all("prm@2" in line for line in some.stdout.splitlines())
    missing = paxmr("local", "logs", "--dir", trio.root, "--node", "7")
    assert missing.returncode == 1


def test_logs_follow_prints_new_lines_until_ctrl_c(trio: Cluster) -> None:
    """`local logs -f` and `logs -f` keep printing what the services log next; Ctrl-C ends
    them with 130, as any interrupted command."""
    node = trio.nodes[0]
    followers = [
        subprocess.Popen(
            [str(PAXMR), *argv, "-f", "-n", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        for argv in (
            ["local", "logs", "--dir", str(trio.root), "--node", "1", "--service", "prm"],
            ["-c", str(node.config), "logs"],
        )
    ]
    seen: list[list[str]] = [[] for _ in followers]
    readers = [
        threading.Thread(target=lambda f=f, s=s: s.extend(f.stdout), daemon=True)
        for f, s in zip(followers, seen, strict=True)
    ]
    for r in readers:
        r.start()
    try:

        def logged_and_seen() -> bool:
            # Again until both show it: one that had not reached the file's end yet skips it.
            ok(node.cli("stop"))
            ok(node.cli("resume"))
            return all(any("resumed_by_operator" in line for line in s) for s in seen)

        wait_until(logged_and_seen, "both followers printed the new lines", interval=0.5)
    finally:
        for f in followers:
            f.send_signal(signal.SIGINT)
    for f, s in zip(followers, seen, strict=True):
        assert f.wait(timeout=15) == 130, f.stderr.read() if f.stderr else ""
        assert any("prm@1 resumed_by_operator" in line for line in s), s  # rendered


def test_tables_fit_long_names_and_separate_thousands(trio: Cluster) -> None:
    node = trio.nodes[0]
    long = "a-file-name-far-longer-than-thirty-two-characters-for-the-tables.txt_reduced"
    (node.data / long).write_bytes(b"paxmr-tally 1\nalpha\t1234567\nbeta\t2000\n")
    position = ok_json(node.cli("-o", "json", "replicate", long))["position"]
    header, *rows = ok(node.cli("print")).stdout.splitlines()
    [row] = [r for r in rows if long in r]
    assert re.fullmatch(rf"\s*{position:,}\s+{re.escape(long)}\s+1\s+1,236,567\s+2", row), row
    # Right-aligned under its header however long the name.
    assert row.index("1,236,567") + len("1,236,567") == header.index("words") + len("words")
    merged = ok(node.cli("merge", str(position))).stdout.splitlines()
    assert merged[0] == f"positions [{position}]: 1,236,567 words, 2 distinct", merged
    assert re.match(r"\s*alpha\s+1,234,567 #", merged[1]), merged
    assert re.match(r"\s*beta\s+2,000 #", merged[2]), merged
    assert merged[1].index("#") == merged[2].index("#")


def test_a_run_whose_outcome_is_unknown_is_retried_with_its_request_id(trio: Cluster) -> None:
    """The error of a `run` without quorum names its request id; `run --request-id` with it
    lands the tally once, whether or not the first attempt's entry landed meanwhile."""
    node, others = trio.nodes[0], trio.nodes[1:]
    (node.data / "retried.txt").write_bytes(b"one two two\n")
    for n in others:
        ok(n.cli("stop"))
    try:
        failed = node.cli("run", "retried.txt")
    finally:
        for n in others:
            ok(n.cli("resume"))
    assert failed.returncode == 5, failed
    [rid] = re.findall(r"[Rr]etry with --request-id ([0-9a-f]{32})", failed.stderr)
    wait_until(lambda: node.cli("health").returncode == 0, "the cluster healthy again")
    retried = ok_json(node.cli("-o", "json", "run", "retried.txt", "--request-id", rid))
    assert retried["replicate"]["request_id"] == rid
    again = ok_json(node.cli("-o", "json", "run", "retried.txt", "--request-id", rid))
    assert again["position"] == retried["position"]
    printed = ok_json(node.cli("-o", "json", "print", "--consistent"))
    assert [e["file"] for e in printed["entries"]].count("retried.txt_reduced") == 1


def test_ctrl_c_during_map_stops_the_mappers_and_exits_130(trio: Cluster) -> None:
    node = trio.nodes[2]
    name = "interrupted.txt"
    with (node.data / name).open("wb") as f:
        for _ in range(400):
            f.write(b"alpha beta gamma delta " * 40_000)  # 0.9 MiB a line, 360 MiB in all
    logs = trio.root / "n3" / "logs"
    offsets = {p: p.stat().st_size for p in logs.glob("mapper-*.log")}
    proc = node.popen("map", name)
    try:

        def started() -> bool:
            return any(b"map_started" in p.read_bytes()[o:] for p, o in offsets.items())

        wait_until(started, "a mapper started counting")
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err
    assert "Traceback" not in err

    def cancelled() -> bool:
        return all(b"map_cancelled" in p.read_bytes()[o:] for p, o in offsets.items())

    wait_until(cancelled, "every mapper logged map_cancelled", timeout=15)
    assert not list(node.data.glob(f"{name}_I_*")), "a cancelled mapper wrote its output"
    (node.data / name).unlink()


class Pty:
    """``paxmr shell`` on a pseudo-terminal, as a person at a keyboard would run it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.execve(argv[0], argv, env)
        self.seen = b""

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def expect(self, marker: bytes, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in {self.seen[-500:]!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"the shell ended; output {self.seen[-500:]!r}"
                self.seen += chunk
        before, _, self.seen = self.seen.partition(marker)
        return before

    def wait(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            assert time.monotonic() < deadline, "the shell did not exit"
            with_output = select.select([self.fd], [], [], 0.1)[0]
            if with_output:
                with contextlib.suppress(OSError):
                    self.seen += os.read(self.fd, 4096)


def test_shell_on_a_terminal_survives_ctrl_c_keeps_history_and_completes(
    trio: Cluster, tmp_path: Path
) -> None:
    node = trio.nodes[0]
    env = clean_env({"HOME": str(tmp_path), "TERM": "dumb"})
    shell = Pty([str(PAXMR), "-c", str(node.config), "shell"], env)
    prompt = b"paxmr[1]> "
    shell.expect(prompt)
    shell.send(b"half a line\x03")  # Ctrl-C at the prompt: a new prompt, not the end
    shell.expect(prompt)
    shell.send(b"heal\t")  # Tab completes the command name
    shell.expect(b"health ")
    shell.send(b"\r")
    out = shell.expect(prompt)
    assert b"healthy" in out
    shell.send(b"print\r")
    shell.expect(prompt)
    shell.send(b"prnt\x02\x02i\r")  # line editing: Ctrl-B twice, then the missing letter
    edited = shell.expect(prompt)
    assert b"log digest" in edited or b"the log is empty" in edited, edited
    shell.send(b"exit\r")
    assert shell.wait() == 0
    history = [line.strip() for line in (tmp_path / ".paxmr_history").read_text().splitlines()]
    assert history[-3:] == ["health", "print", "exit"]  # the edited line was print: no repeat


def test_piped_shell_exits_with_the_failing_code(trio: Cluster) -> None:
    node = trio.nodes[0]
    good = node.cli("shell", input="health\nprint\n")
    assert good.returncode == 0, good.stderr
    bad = node.cli("shell", input="total 999999\nprint\n")
    assert bad.returncode == 1, bad.stderr
    assert "no log position 999999" in bad.stderr
