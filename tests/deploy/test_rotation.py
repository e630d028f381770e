"""Certificate renewal under load (issue 10): new certificates reach the PRMs one node at a time
while replicates run on every node, and no replicate is lost or lands twice."""

from __future__ import annotations

import collections
import re
import shlex
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from tests.support.hosts import NODE_IDS, Cluster, playbook

if TYPE_CHECKING:
    from testbed.testbed import Testbed

pytestmark = pytest.mark.deploy
HOSTS = list(NODE_IDS)
STOP = "/tmp/paxmr-load-stop"

# Replicates one after another until STOP exists, each with its own request id. A replicate whose
# outcome is unknown (no quorum, a restarting node) is retried with the same id, as the CLI tells
# an operator to do; one line per replicate: "ok ID RETRIES" (or "gave-up ID" after 60 tries),
# and "retry ID ERROR" per failed attempt.
LOAD = rf"""
set -u
i=0
while [ ! -e {STOP} ]; do
  i=$((i+1)); id="$1-$i"; tries=0
  until sudo paxmr replicate rot.txt_reduced --request-id "$id" >/dev/null 2>/tmp/load-err; do
    tries=$((tries+1)); echo "retry $id $(tr '\n' ' ' </tmp/load-err | head -c 200)"
    [ $tries -ge 60 ] && {{ echo "gave-up $id"; continue 2; }}
    sleep 0.5
  done
  echo "ok $id $tries"
done
"""

# The SHA-256 of the certificate a node's peer port presents, and of the one in its TLS files.
SERVED = r"""
import hashlib, socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations("/etc/paxmr/tls/peer-ca")
ctx.load_cert_chain("/etc/paxmr/tls/peer-cert", "/etc/paxmr/tls/peer-key")
with ctx.wrap_socket(socket.create_connection((sys.argv[1], 7400), timeout=5),
                     server_hostname=sys.argv[2]) as s:
    served = hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()
pem = open("/etc/paxmr/tls/peer-cert").read()
print(served, hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest())
"""


def _served(cluster: Cluster, host: str) -> tuple[str, str]:
    # Asked by the node itself (its own address is a member's, so the allow-list lets it in).
    address = cluster.testbed.address(host)
    cmd = f"sudo python3 -c {shlex.quote(SERVED)} {address} paxmr-node-{NODE_IDS[host]}"
    served, on_disk = cluster.testbed.run(host, cmd, timeout=30).stdout.split()
    return served, on_disk


def _pid(cluster: Cluster, host: str, unit: str) -> str:
    return cluster.testbed.run(host, f"systemctl show -P MainPID {unit}").stdout.strip()


def _start_load(testbed: Testbed, host: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ssh", "-F", str(testbed.ssh_config), host, "--",
         f"sh -c {shlex.quote(LOAD)} load {host}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def test_certificate_renewal_rolls_under_load(cluster: Cluster) -> None:
    bed = cluster.testbed
    for seed, host in enumerate(HOSTS, start=1):
        bed.run(host, f"sudo rm -f {STOP}")
        cluster.gen(host, "rot.txt", "16KiB", seed)
        assert cluster.cli(host, "run", "rot.txt").returncode == 0  # writes rot.txt_reduced
    cluster.wait_converged()
    before = {h: (_pid(cluster, h, "paxmr-prm"), _pid(cluster, h, "paxmr-reducer")) for h in HOSTS}
    served_before = {h: _served(cluster, h) for h in HOSTS}
    assert all(served == on_disk for served, on_disk in served_before.values())

    loads = {host: _start_load(bed, host) for host in HOSTS}
    try:
        time.sleep(3)  # every node replicating before the renewal starts
        # Every certificate has less than 100,000 days left: all three are issued again.
        run = playbook("site.yml", "-e", "paxmr_tls_renew_days=100000")
    finally:
        for host in HOSTS:
            bed.run(host, f"sudo touch {STOP}")
        outputs = {host: proc.communicate(timeout=120)[0] for host, proc in loads.items()}
    run.check()

    # One node at a time, each healthy again before the next one restarts.
    steps = re.findall(
        r"(?:TASK|RUNNING HANDLER) \[paxmr : (Restart the PRM of|Wait until paxmr health passes on)"
        r" (\w+)\]",
        run.output,
    )
    assert steps == [
        (step, host)
        for host in HOSTS
        for step in ("Restart the PRM of", "Wait until paxmr health passes on")
    ], steps
    for host in HOSTS:
        prm, reducer = before[host]
        assert _pid(cluster, host, "paxmr-prm") != prm, f"{host}: the PRM was not restarted"
        assert _pid(cluster, host, "paxmr-reducer") == reducer, (
            f"{host}: more than the PRM restarted"
        )
        served, on_disk = _served(cluster, host)
        assert served == on_disk != served_before[host][0], f"{host} serves an old certificate"

    # Every replicate acknowledged, each exactly once in the log, on every node.
    lines = [line for out in outputs.values() for line in out.splitlines()]
    acked = [line.split()[1] for line in lines if line.startswith("ok ")]
    retries = [line for line in lines if line.startswith("retry ")]
    gave_up = [line for line in lines if line.startswith("gave-up ")]
    log = cluster.wait_converged()
    in_log = collections.Counter(e["request_id"] for e in log["entries"])
    print(f"\nrenewal under load: {len(acked)} replicates acknowledged during a {run.seconds:.0f} s"
          f" site.yml run, {len(retries)} attempts retried: {retries[:10]}")  # fmt: skip
    assert not gave_up, gave_up
    assert len(acked) >= 3 * len(HOSTS), outputs
    assert [rid for rid in acked if in_log[rid] != 1] == []
