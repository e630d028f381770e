"""The deployed cluster on the systemd test hosts (testbed/testbed.py): ansible-playbook against
the testbed inventory, and the ``paxmr`` command on each host over ssh."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.testbed import Testbed
from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
INVENTORY = REPO / "inventory" / "testbed" / "hosts.yml"
WHEELHOUSE = REPO / "build" / "wheelhouse"
BIN = Path(sys.executable).parent

NODE_IDS = {"paxmr1": 1, "paxmr2": 2, "paxmr3": 3}  # as in inventory/testbed/hosts.yml
SERVICES = ["paxmr-prm.service", "paxmr-reducer.service",
            "paxmr-mapper@1.service", "paxmr-mapper@2.service"]  # fmt: skip
SOCKETS = {"paxmr-prm.socket": "prm.sock", "paxmr-reducer.socket": "reducer.sock",
           "paxmr-mapper@1.socket": "mapper-1.sock", "paxmr-mapper@2.socket": "mapper-2.sock"}  # fmt: skip

# Every poll on the hosts is an ssh round trip: poll them less often than local sockets.
HOST_POLL_S = 0.5

_RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass
class PlaybookRun:
    playbook: str
    returncode: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in _RECAP.finditer(self.output)
        }

    def check(self) -> PlaybookRun:
        assert self.returncode == 0, f"{self.playbook} failed:\n{self.output[-6000:]}"
        return self


def playbook(
    name: str, *args: str, timeout: float = 600, inventory: Path = INVENTORY
) -> PlaybookRun:
    """ansible-playbook from ansible/ (its ansible.cfg) against the testbed inventory."""
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    start = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), name, *args],
        cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return PlaybookRun(name, proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)


class Cluster:
    """The deployed cluster: the paxmr command on each host, as root, with JSON output.

    (``tests.support.local.Cluster`` is the local one on loopback.)"""

    def __init__(self, testbed: Testbed, hosts: list[str] | None = None) -> None:
        self.testbed = testbed
        self.hosts = list(testbed.hosts if hosts is None else hosts)

    def cli(
        self, host: str, *args: str, user: str = "root", timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = f"sudo -u {user} paxmr {shlex.join(args)}"
        return self.testbed.run(host, cmd, check=False, timeout=timeout)

    def json(self, host: str, *args: str, timeout: float = 120) -> Any:
        proc = self.cli(host, "-o", "json", *args, timeout=timeout)
        assert proc.returncode == 0, (
            f"{host}: paxmr {' '.join(args)} -> {proc.returncode}\n{proc.stderr}"
        )
        return json.loads(proc.stdout)

    def status(self, host: str) -> dict[str, Any] | None:
        proc = self.cli(host, "-o", "json", "status", timeout=30)
        # 5: the replica answers but is unhealthy (stopped, no leader or no quorum): still a report.
        report: dict[str, Any] | None = (
            json.loads(proc.stdout) if proc.returncode in {0, 5} else None
        )
        return report

    def leader(self) -> str:
        """The host every running node names as leader, once they agree."""
        by_id = {node_id: host for host, node_id in NODE_IDS.items()}
        agreed: set[Any] = set()

        def agree() -> bool:
            agreed.clear()
            for host in self.hosts:
                st = self.status(host)
                agreed.add(st["prm"]["leader"] if st else None)
            return len(agreed) == 1 and None not in agreed

        wait_until(
            agree, lambda: f"nodes agree on a leader (last seen {agreed})", timeout=60,
            interval=HOST_POLL_S,
        )  # fmt: skip
        return by_id[agreed.pop()]

    def wait_healthy(self, hosts: list[str] | None = None, timeout: float = 90) -> None:
        def healthy(host: str) -> bool:
            st = self.status(host)
            return bool(st and st["prm"]["leader"] is not None
                        and set(st["services"].values()) == {"up"})  # fmt: skip

        for host in hosts or self.hosts:
            wait_until(
                functools.partial(healthy, host), f"{host} healthy", timeout=timeout,
                interval=HOST_POLL_S,
            )  # fmt: skip

    def log(self, host: str) -> dict[str, Any]:
        log: dict[str, Any] = self.json(host, "print")
        return log

    def wait_converged(self, timeout: float = 60) -> dict[str, Any]:
        """Wait until every host holds the same log; return it."""
        logs: dict[str, dict[str, Any]] = {}

        def same() -> bool:
            for host in self.hosts:
                logs[host] = self.log(host)
            return len({entry["digest"] for entry in logs.values()}) == 1

        wait_until(same, "identical logs on every host", timeout=timeout, interval=HOST_POLL_S)
        return logs[self.hosts[0]]

    def gen(self, host: str, name: str, size: str, seed: int) -> None:
        path = f"/var/lib/paxmr/data/{name}"
        self.testbed.run(
            host, f"sudo -u paxmr paxmr gen-corpus --size {size} --seed {seed} {path}", timeout=120
        )


# Replicates one after another until the stop file exists, each with its own request id. A
# replicate whose outcome is unknown (no quorum, a restarting node) is retried with the same id, as
# the CLI tells an operator to do; one line per replicate: "ok ID RETRIES" (or "gave-up ID" after
# 60 tries), and "retry ID ERROR" per failed attempt.
_LOAD = r"""
set -u
i=0
while [ ! -e "$2" ]; do
  i=$((i+1)); id="$1-$i"; tries=0
  until sudo paxmr replicate "$3" --request-id "$id" >/dev/null 2>/tmp/load-err; do
    tries=$((tries+1)); echo "retry $id $(tr '\n' ' ' </tmp/load-err | head -c 200)"
    [ $tries -ge 60 ] && { echo "gave-up $id"; continue 2; }
    sleep 0.5
  done
  echo "ok $id $tries"
done
"""


@dataclass
class LoadResult:
    acknowledged: list[str]  # request ids the client was told committed
    retries: list[str]  # "retry ID ERROR" lines
    gave_up: list[str]
    output: str


class Load:
    """Replicates of `file` (a reduced tally in the data directory) on `host` over ssh, one after
    another from start() until stop()."""

    def __init__(self, testbed: Testbed, host: str, file: str) -> None:
        self.testbed, self.host, self.file = testbed, host, file
        self.stop_file = f"/tmp/paxmr-load-stop-{host}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.testbed.run(self.host, f"sudo rm -f {self.stop_file}")
        # Request ids unique to this load: the log keeps those of earlier tests and sessions.
        prefix = f"{self.host}-{uuid.uuid4().hex[:8]}"
        args = shlex.join(["load", prefix, self.stop_file, self.file])
        self.proc = subprocess.Popen(
            ["ssh", "-F", str(self.testbed.ssh_config), self.host, "--",
             f"sh -c {shlex.quote(_LOAD)} {args}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip

    def stop(self) -> LoadResult:
        assert self.proc is not None, "stop() before start()"
        self.testbed.run(self.host, f"sudo touch {self.stop_file}")
        out = self.proc.communicate(timeout=120)[0]
        lines = out.splitlines()
        return LoadResult(
            [line.split()[1] for line in lines if line.startswith("ok ")],
            [line for line in lines if line.startswith("retry ")],
            [line for line in lines if line.startswith("gave-up ")],
            out,
        )
