"""The test hosts, booted once per session (testbed/testbed.py) and reused by every deploy test."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

# testbed/ is a script directory, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from testbed.testbed import Testbed


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    reason = Testbed.unavailable_reason()
    if reason:
        # CI sets this: there the deploy tier must run, a skip would hide that it did not.
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
