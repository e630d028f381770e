"""Deploy tier: site.yml run once per session on the three test hosts (the hosts themselves come
from the ``testbed`` fixture in tests/conftest.py; the helpers from tests/support/hosts.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.testbed import Testbed
from tests.support.hosts import BIN, REPO, WHEELHOUSE, Cluster, PlaybookRun, playbook


@pytest.fixture(scope="session")
def deployed(testbed: Testbed) -> PlaybookRun:
    """paxmr's wheel built from this checkout and site.yml run once on all three hosts (the role
    downloads the wheels for each host's Python and architecture next to it)."""
    subprocess.run(
        [str(BIN / "pip"), "wheel", "--quiet", "--no-deps", "--wheel-dir", str(WHEELHOUSE),
         str(REPO)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return playbook("site.yml").check()


@pytest.fixture(scope="session")
def cluster(testbed: Testbed, deployed: PlaybookRun) -> Cluster:
    return Cluster(testbed)


@pytest.fixture
def faults(testbed: Testbed, cluster: Cluster) -> Iterator[Testbed]:
    """A test that injects faults gets every host healed, booted and healthy again afterwards."""
    yield testbed
    testbed.heal_all()
    for host in testbed.hosts:
        testbed.boot(host)
    cluster.wait_healthy()


@pytest.fixture(scope="session")
def testinfra_hosts(testbed: Testbed, deployed: PlaybookRun) -> dict[str, Any]:
    import testinfra  # noqa: PLC0415  # only the deploy tier needs it

    return {
        host: testinfra.get_host(f"ssh://{host}", ssh_config=str(testbed.ssh_config), sudo=True)
        for host in testbed.hosts
    }


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_members.py leaves other hosts as members (paxmr3 rejoins on a fresh disk under a new
    id): it runs after the rest of the deploy tier, which expects the founding three."""
    deploy = [i for i, item in enumerate(items) if item.nodeid.startswith("tests/deploy/")]
    ordered = sorted((items[i] for i in deploy), key=lambda item: "/test_members.py" in item.nodeid)
    for i, item in zip(deploy, ordered, strict=True):
        items[i] = item
