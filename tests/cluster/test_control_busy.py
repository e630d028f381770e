"""A PRM whose control connections are all taken by running requests refuses a new client with
``busy`` before reading its request: the CLI exits 5 (retry later, like every outcome not known
yet), ``status``/``health`` too, and a retry lands the tally once.

The cluster of this module keeps only ``LIMIT`` control connections per service, and the test
holds all of them (``held``): each sends many ``status`` requests at once and reads no reply, so
the PRM's write of a reply waits for room that never comes and the connection stays "running a
request" (the server drops a connection for a newcomer only while it waits for a request).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.support.local import Cluster, Node, running_cluster
from tests.support.wait import CONVERGE_S

pytestmark = pytest.mark.integration

LIMIT = 2  # the least limits.control_connections allows
FILE = "small_reduced"
STATUS = b'{"op":"status"}\n'
# 2,000 replies of ~550 bytes (1.1 MB) are far more than the socket's buffer and asyncio's
# 64 KiB high-water mark hold, so the PRM's drain never returns; the 32 KB of requests reach
# the PRM in one read, so it never waits for its next request meanwhile.
HELD_REQUESTS = 2000


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    env = {"PAXMR_LIMITS__CONTROL_CONNECTIONS": str(LIMIT)}
    with running_cluster(env=env, tallies=True) as c:
        yield c


@contextlib.contextmanager
def held(node: Node) -> Iterator[None]:
    """Every control connection of ``node``'s PRM running a request that cannot finish."""
    socks: list[socket.socket] = []
    try:
        for _ in range(LIMIT):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(sock)
            sock.settimeout(CONVERGE_S)
            sock.connect(str(node.settings.prm_socket))
            sock.sendall(STATUS * HELD_REQUESTS)
        for sock in socks:  # its first reply: the PRM took the connection and reads no more
            assert sock.recv(1, socket.MSG_PEEK) == b"{"
        yield
    finally:
        for sock in socks:
            sock.close()


def refused_busy(done: subprocess.CompletedProcess[str], request_id: str | None = None) -> None:
    """Exit 5 with busy; a replicate's error names its `request_id` ("": the CLI's own)."""
    assert done.returncode == 5, done
    assert "busy; retry later [busy]" in done.stderr, done.stderr
    if request_id is not None:
        assert f"(request id {request_id}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_replicate_into_a_full_control_socket_exits_5_and_a_retry_lands_once(
    cluster: Cluster,
) -> None:
    node = cluster.node(1)
    cluster.converged()
    before = node.status()["entries"]
    rid = uuid.uuid4().hex
    logged = node.prm_log.stat().st_size
    with held(node):
        refused_busy(node.cli("replicate", FILE, "--request-id", rid), rid)
        refused_busy(node.cli("-o", "json", "replicate", FILE, "--request-id", rid), rid)
    assert node.log_events("control_busy", after=logged), "the PRM logged no busy refusal"
    retry = node.cli("-o", "json", "replicate", FILE, "--request-id", rid)
    assert retry.returncode == 0, retry
    position = json.loads(retry.stdout)["position"]
    cluster.converged()
    for n in cluster.nodes:  # the refusals submitted nothing: the retry is the only copy
        ids = [e["request_id"] for e in n.call("print")["entries"]]
        assert len(ids) == before + 1, (n.id, ids)
        assert ids.index(rid) == position
        assert ids.count(rid) == 1


def test_status_and_health_of_a_node_whose_prm_is_busy_exit_5(cluster: Cluster) -> None:
    """The PRM answers, with busy: a state to retry, not a service that does not answer (1)."""
    node = cluster.node(2)
    with held(node):
        text = node.cli("status")
        report = node.cli("-o", "json", "status")
        health = node.cli("health")
        whole = node.cli("health", "--cluster")  # asked through this PRM
    assert text.returncode == 5, text
    assert "prm        busy" in text.stdout, text.stdout
    assert report.returncode == 5, report
    status = json.loads(report.stdout)
    assert status["services"] == {"mapper-1": "up", "reducer": "up", "prm": "busy"}
    assert status["exit_code"] == 5
    assert health.returncode == 5, health
    assert "prm busy" in health.stdout, health.stdout
    refused_busy(whole)
    assert node.cli("status").returncode == 0  # released: healthy again


def test_a_refusal_that_comes_before_the_request_is_sent_still_reads_busy(
    cluster: Cluster,
) -> None:
    """The PRM refuses a newcomer as soon as it accepts it, without reading: the CLI may send its
    request after the PRM hung up (a loaded machine; here its send is held back a second with
    strace), and must still report the refusal the PRM wrote, not a broken pipe."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: cannot hold the CLI's send back")
    late = ("strace", "-f", "-o", "/dev/null", "-e", "inject=sendto:delay_enter=1000000")
    if subprocess.run([*late, "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("strace cannot trace here")
    node = cluster.node(3)
    with held(node):
        refused_busy(node.cli("replicate", FILE, prefix=late), "")
        report = node.cli("-o", "json", "status", prefix=late)
    assert report.returncode == 5, report
    assert json.loads(report.stdout)["services"]["prm"] == "busy"
