"""A real local cluster (``paxmr local up``) shared by the integration tier.

Everything goes through the real ``paxmr`` executable and the services' real Unix sockets.
The cluster directory is world-traversable so a test can run the CLI as an unprivileged user.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.local import Cluster, Node, start_cluster, stop_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="paxmr-it-"))
    root.chmod(0o755)
    try:
        c = start_cluster(root, nodes=2)
        yield c
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def node(cluster: Cluster) -> Node:
    return cluster.nodes[0]
