"""The unit files as shipped: systemd-analyze verify and security, offline on this machine.

Not marked deploy: they need systemd-analyze, not the test hosts. The same checks run on the
hosts against the installed units in test_hosts.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
# Template units are verified and rated as an instance.
INSTANCES = ["paxmr.target", "paxmr-prm.service", "paxmr-prm.socket", "paxmr-reducer.service",
             "paxmr-reducer.socket", "paxmr-mapper@1.service", "paxmr-mapper@1.socket"]  # fmt: skip
SERVICES = [u for u in INSTANCES if u.endswith(".service")]
EXEC = "opt/paxmr/venv/bin/paxmr"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the units installed, systemd's own units and a stand-in for the binary."""
    root = tmp_path_factory.mktemp("root")
    (root / "etc/systemd").mkdir(parents=True)
    shutil.copytree(UNITS, root / "etc/systemd/system")
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    exe = root / EXEC
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return root


def test_verify_is_clean(root: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *INSTANCES],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0
    assert proc.stdout + proc.stderr == ""


def exposure(output: str) -> float:
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert m, output
    return float(m[1])


@pytest.mark.parametrize("unit", SERVICES)
def test_security_exposure_at_most_2(root: Path, unit: str) -> None:
    path = root / "etc/systemd/system" / unit
    if "@" in unit:
        path.write_text((UNITS / re.sub(r"@\w+\.", "@.", unit)).read_text())
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert exposure(proc.stdout) <= 2.0, proc.stdout


HARDENING = UNITS / "paxmr-.service.d" / "10-hardening.conf"


def _keys(text: str) -> set[str]:
    return {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and line[0] != "#"}


def test_hardening_has_one_source() -> None:
    """The shared block lives in the prefix drop-in only; no unit spells any of its settings."""
    shared = _keys(HARDENING.read_text())
    assert {"ProtectSystem", "SystemCallFilter", "CapabilityBoundingSet"} <= shared
    for unit in ("paxmr-prm.service", "paxmr-reducer.service", "paxmr-mapper@.service"):
        assert _keys((UNITS / unit).read_text()) & shared == set(), unit


@pytest.mark.parametrize("unit", SERVICES)
def test_the_rating_comes_from_the_drop_in(root: Path, unit: str, tmp_path: Path) -> None:
    """Without the shared drop-in each unit is rated far above 2.0: the drop-in is applied."""
    bare = tmp_path / unit
    bare.write_text((UNITS / re.sub(r"@\w+\.", "@.", unit)).read_text())
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(bare)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert exposure(proc.stdout) > 5.0, proc.stdout
