"""Peer TLS on the deployed hosts (issue 10): certificates that name node ids, a peer port that
refuses plain TCP and clients without a member certificate, and an IP allow-list of members."""

from __future__ import annotations

import json
import shlex
import socket
from typing import Any

import pytest

from tests.support.hosts import NODE_IDS, Cluster

pytestmark = pytest.mark.deploy
HOSTS = list(NODE_IDS)
PORT = 7400

# Run on a host with python3 (as root, so it may read that host's own key and certificate).
PROBE = r"""
import json, socket, ssl, sys
host, mode = sys.argv[1], sys.argv[2]
out = {}
raw = socket.create_connection((host, 7400), timeout=5)
try:
    if mode == "plain":
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
        out["reply"] = raw.recv(100).hex()
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations("/etc/paxmr/tls/peer-ca")
        if mode == "member":
            ctx.load_cert_chain("/etc/paxmr/tls/peer-cert", "/etc/paxmr/tls/peer-key")
        name = sys.argv[3]
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            out["version"] = s.version()
            s.settimeout(3)
            try:
                out["reply"] = s.recv(100).hex()  # the server closes at once if it refused us
            except TimeoutError:
                out["reply"] = "open"
except Exception as exc:
    out["error"] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""


def _probe(
    cluster: Cluster, src: str, dst: str, mode: str, name: str | None = None
) -> dict[str, Any]:
    cmd = f"sudo python3 -c {shlex.quote(PROBE)} {cluster.testbed.address(dst)} {mode}"
    cmd += f" {name or f'paxmr-node-{NODE_IDS[dst]}'}"
    proc = cluster.testbed.run(src, cmd, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("host", HOSTS)
def test_tls_files_are_root_only_and_name_the_node(
    testinfra_hosts: dict[str, Any], host: str
) -> None:
    h = testinfra_hosts[host]
    for name in ("peer-ca", "peer-cert", "peer-key"):
        f = h.file(f"/etc/paxmr/tls/{name}")
        assert (f.user, f.group, f.mode) == ("root", "root", 0o600), name
    decoded = h.check_output(
        "python3 -c 'import ssl, sys; print(ssl._ssl._test_decode_cert(sys.argv[1]))'"
        " /etc/paxmr/tls/peer-cert"
    )
    assert f"'DNS', 'paxmr-node-{NODE_IDS[host]}'" in decoded
    unit = h.check_output("systemctl cat paxmr-prm.service")
    assert "LoadCredential=peer-key:/etc/paxmr/tls/peer-key" in unit
    assert "IPAddressDeny=any" in unit


def test_peer_port_speaks_mutual_tls_only(cluster: Cluster) -> None:
    # A member with its own certificate: TLS 1.3, the server proves it is node 1, stays open.
    member = _probe(cluster, "paxmr2", "paxmr1", "member")
    assert member.get("version") == "TLSv1.3", member
    assert member.get("reply") == "open", member
    # The right server name is checked: node 1 does not pass for node 3.
    wrong = _probe(cluster, "paxmr2", "paxmr1", "member", name="paxmr-node-3")
    assert "Hostname mismatch" in wrong.get("error", ""), wrong
    # No client certificate: refused (closed with an alert, nothing read).
    anonymous = _probe(cluster, "paxmr2", "paxmr1", "anonymous")
    assert "error" in anonymous or anonymous.get("reply") == "", anonymous
    # Plain TCP: closed without a byte of reply.
    plain = _probe(cluster, "paxmr2", "paxmr1", "plain")
    assert plain.get("reply") == "" or "error" in plain, plain
    cluster.wait_healthy()


# Run on a host: a TCP connection to DST's peer port from the local address SRC.
CONNECT = r"""
import socket, sys
s = socket.socket()
s.settimeout(3)
s.bind((sys.argv[1], 0))
try:
    s.connect((sys.argv[2], 7400))
    print("connected")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print(f"error {exc.errno}")
"""
OUTSIDER = "10.77.0.14"  # on the private bridge, in no inventory


def _connect(address: str) -> str:
    try:
        with socket.create_connection((address, PORT), timeout=3):
            return "connected"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error {exc.errno}"


def test_ip_accounting_shows_the_bpf_firewall_attached(testinfra_hosts: dict[str, Any]) -> None:
    """IPAddressAllow= and IP accounting share systemd's cgroup BPF hooks: counters, not
    "[no data]", mean the allow-list is attached to the PRM (the role checks the same)."""
    for name, h in testinfra_hosts.items():
        counter = h.check_output("systemctl show -P IPIngressBytes paxmr-prm.service")
        assert counter.isdigit(), f"{name}: IPIngressBytes={counter}"


def test_non_members_cannot_reach_the_peer_port(cluster: Cluster) -> None:
    """Only the members' peer addresses (and loopback) get through the PRM's IP allow-list: the
    controller is refused, and so is a member host speaking from a 4th address on the bridge,
    while the same host from its own address connects (so it is the address that is refused)."""
    bed = cluster.testbed
    target = bed.address("paxmr1")
    assert _connect(target) == "timeout"  # the controller, 10.77.0.1: dropped, no answer at all

    def connect_from(src: str) -> str:
        cmd = f"sudo python3 -c {shlex.quote(CONNECT)} {src} {target}"
        return bed.run("paxmr2", cmd, timeout=30).stdout.strip()

    bed.run("paxmr2", f"sudo ip address add {OUTSIDER}/24 dev host0")
    try:
        assert connect_from(OUTSIDER) == "timeout"
        assert connect_from(bed.address("paxmr2")) == "connected"
    finally:
        bed.run("paxmr2", f"sudo ip address del {OUTSIDER}/24 dev host0")
    cluster.wait_healthy()
