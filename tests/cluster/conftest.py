"""Fixtures of the cluster tier: one real 3-node local cluster per module (see tests/support/local.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.local import Cluster, running_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster(mappers=1, tallies=True) as c:
        yield c


@pytest.fixture
def healthy(cluster: Cluster) -> Iterator[Cluster]:
    """The module's cluster, healed after the test so one failure does not cascade."""
    yield cluster
    cluster.heal()
    cluster.converged()
