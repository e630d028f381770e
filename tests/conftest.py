"""Shared by every tier: hypothesis settings that do not flake on a busy CI machine, and the
three test hosts (testbed/testbed.py), booted once per session for the testbed and deploy tiers."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# testbed/ is a script directory beside tests/, not part of the installed package; pytest puts
# the repository root on sys.path (`pythonpath` in pyproject.toml).
from testbed.testbed import Testbed

# No per-example deadline: a loaded 2-core runner must not turn a slow example into a failure.
settings.register_profile("paxmr", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", parent=settings.get_profile("paxmr"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "paxmr"))

# A shell starts a background job (`cmd &` without job control: nohup, a CI runner's script)
# with SIGINT ignored, and a child inherits an ignored signal through exec: then the commands
# the tests interrupt (Ctrl-C tests) would ignore it too. Python's own handler is reset to the
# default at exec, so the children take Ctrl-C as they would from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# `make test` runs these directories beside every other tier: a test elsewhere that used the
# hosts would share them with a concurrent run.
HOST_TIERS = ("tests/deploy/", "tests/testbed/")


@pytest.fixture(autouse=True)
def _hosts_only_in_host_tiers(request: pytest.FixtureRequest) -> None:
    if "testbed" in request.fixturenames and not request.node.nodeid.startswith(HOST_TIERS):
        pytest.fail(f"tests that use the test hosts live in {' or '.join(HOST_TIERS)} (Makefile)")


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    reason = Testbed.unavailable_reason()
    if reason:
        # CI sets this: there the deploy tier must run, and a skip would hide that it did not.
        if os.environ.get("PAXMR_REQUIRE_DEPLOY") == "1":
            pytest.fail(f"PAXMR_REQUIRE_DEPLOY=1 but the test hosts cannot run: {reason}")
        pytest.skip(f"test hosts unavailable: {reason}")
    bed = Testbed()
    bed.up()
    bed.heal_all()
    yield bed
    # Left running for the next session (`make testbed-down` removes them); only undo faults.
    bed.heal_all()
    for host in bed.hosts:
        bed.boot(host)
