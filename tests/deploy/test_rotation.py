"""Certificate renewal under load (issue 10): new certificates reach the PRMs one node at a time
while replicates run on every node, and no replicate is lost or lands twice."""

from __future__ import annotations

import collections
import re
import shlex
import time

import pytest

from tests.support.hosts import NODE_IDS, Cluster, Load, playbook

pytestmark = pytest.mark.deploy
HOSTS = list(NODE_IDS)

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


def test_certificate_renewal_rolls_under_load(cluster: Cluster) -> None:
    bed = cluster.testbed
    for seed, host in enumerate(HOSTS, start=1):
        cluster.gen(host, "rot.txt", "16KiB", seed)
        assert cluster.cli(host, "run", "rot.txt").returncode == 0  # writes rot.txt_reduced
    cluster.wait_converged()
    before = {h: (_pid(cluster, h, "paxmr-prm"), _pid(cluster, h, "paxmr-reducer")) for h in HOSTS}
    served_before = {h: _served(cluster, h) for h in HOSTS}
    assert all(served == on_disk for served, on_disk in served_before.values())

    loads = {host: Load(bed, host, "rot.txt_reduced") for host in HOSTS}
    for load in loads.values():
        load.start()
    try:
        time.sleep(3)  # every node replicating before the renewal starts
        # Every certificate has less than 100,000 days left: all three are issued again.
        run = playbook("site.yml", "-e", "paxmr_tls_renew_days=100000")
    finally:
        results = [load.stop() for load in loads.values()]
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
    acked = [rid for result in results for rid in result.acknowledged]
    retries = [line for result in results for line in result.retries]
    gave_up = [line for result in results for line in result.gave_up]
    log = cluster.wait_converged()
    in_log = collections.Counter(e["request_id"] for e in log["entries"])
    print(f"\nrenewal under load: {len(acked)} replicates acknowledged during a {run.seconds:.0f} s"
          f" site.yml run, {len(retries)} attempts retried: {retries[:10]}")  # fmt: skip
    assert not gave_up, gave_up
    assert len(acked) >= 3 * len(HOSTS), [result.output for result in results]
    assert [rid for rid in acked if in_log[rid] != 1] == []
