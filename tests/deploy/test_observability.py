"""What an operator watches on the deployed hosts: `paxmr health`, the PRM's Prometheus endpoint
on loopback, and the journal's record of a leader change (issue 13)."""

from __future__ import annotations

import json

import pytest

from testbed.testbed import Testbed
from tests.support import metrics
from tests.support.hosts import HOST_POLL_S, NODE_IDS, Cluster
from tests.support.wait import wait_until

pytestmark = pytest.mark.deploy

METRICS_URL = "http://127.0.0.1:9464/metrics"  # the role's default paxmr_metrics_port, loopback


def scrape(testbed: Testbed, host: str) -> dict[str, float]:
    """The PRM's metrics, fetched on the host itself (the endpoint listens on loopback only)."""
    fetch = (
        f"import urllib.request as u; print(u.urlopen({METRICS_URL!r}, timeout=10).read().decode())"
    )
    return metrics.parse(testbed.run(host, f"python3 -c {json.dumps(fetch)}").stdout)


def test_health_exits_0_on_every_host(cluster: Cluster) -> None:
    for host in cluster.hosts:
        done = cluster.cli(host, "health")
        assert done.returncode == 0, (host, done.stdout, done.stderr)


def test_a_leader_change_shows_in_the_metrics_and_the_journal(
    cluster: Cluster, faults: Testbed
) -> None:
    old = cluster.leader()
    survivors = [h for h in cluster.hosts if h != old]
    changes = "paxmr_leader_changes_seen_total"
    before = {h: scrape(faults, h) for h in survivors}
    for h in survivors:
        assert before[h]["paxmr_has_leader"] == 1
    since = faults.run(survivors[0], "date --utc '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    faults.run(old, "sudo systemctl kill -s KILL paxmr-prm")

    def moved() -> bool:
        return all(scrape(faults, h)[changes] > before[h][changes] for h in survivors)

    wait_until(moved, "the survivors count a leader change", timeout=60, interval=HOST_POLL_S)
    new = cluster.leader()  # systemd restarted the old PRM meanwhile; they agree again
    wait_until(
        lambda: cluster.cli(survivors[0], "health").returncode == 0,
        "health exit 0 again",
        timeout=60,
        interval=HOST_POLL_S,
    )
    journal = faults.run(
        survivors[0],
        f"sudo journalctl -u paxmr-prm -o cat --since '{since}' --no-pager",
    ).stdout
    changed = [e for e in map(_record, journal.splitlines()) if e.get("event") == "leader_changed"]
    assert changed, journal[-3000:]
    assert any(e["leader"] == NODE_IDS[new] for e in changed), changed
    # The metrics endpoint stays on loopback: the host's own address does not serve it.
    address = faults.address(survivors[0])
    probe = f"import socket; socket.create_connection(({address!r}, 9464), 3)"
    refused = faults.run(survivors[0], f"python3 -c {json.dumps(probe)}", check=False)
    assert refused.returncode != 0, refused


def _record(line: str) -> dict[str, object]:
    """A journal line as the PRM logged it (one JSON object), or {} for systemd's own lines."""
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}
