"""A 5-node cluster (`paxmr local up --nodes 5`): a quorum is three, whatever the other two do."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from paxmr import local
from tests.support.local import (
    REPLICATE_TIMEOUT,
    Cluster,
    running_cluster,
    service_env,
    sigkill,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster(nodes=5, tallies=True) as c:
        yield c


def test_two_of_five_killed_the_rest_commit_then_catch_up(cluster: Cluster) -> None:
    leader = cluster.leader()
    victims = [next(n for n in cluster.nodes if n.id != leader), cluster.node(leader)]
    for n in victims:
        sigkill(n.prm_pid())
    survivors = [n for n in cluster.nodes if n not in victims]
    for n in survivors:
        done = n.cli("-o", "json", "replicate", "small_reduced")
        assert done.returncode == 0, done.stderr
    digest = cluster.converged(nodes=survivors)
    with service_env():
        for n in victims:
            local.restart(cluster.root, n.id, "prm")
    assert cluster.converged() == digest
    assert cluster.node(1).status()["entries"] == len(survivors)


def test_three_of_five_stopped_replicate_fails_with_exit_5(cluster: Cluster) -> None:
    stopped = cluster.nodes[:3]
    for n in stopped:
        assert n.cli("stop").returncode == 0
    try:
        for n in cluster.nodes[3:]:
            started = time.monotonic()
            done = n.cli("replicate", "small_reduced")
            assert done.returncode == 5, done
            assert time.monotonic() - started < 3 * REPLICATE_TIMEOUT
    finally:
        for n in stopped:
            n.cli("resume")
    done = cluster.node(5).cli("replicate", "small_reduced")
    assert done.returncode == 0, done.stderr
    cluster.converged()
