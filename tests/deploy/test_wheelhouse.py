"""The controller's wheelhouse builder (ansible/roles/paxmr/files/wheelhouse.py), offline.

Not marked deploy: it needs pip, not the test hosts. The deploy tier runs it for real (with the
package index) against Debian 12 and 13 hosts.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.hosts import REPO

SCRIPT = REPO / "ansible" / "roles" / "paxmr" / "files" / "wheelhouse.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("paxmr_wheelhouse", SCRIPT)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheelhouse = _load()


@pytest.fixture(scope="module")
def paxmr_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(out), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("paxmr-*-py3-none-any.whl")
    return wheel


def test_target_selects_the_hosts_python_and_architecture() -> None:
    args = wheelhouse.target_args("cp313-aarch64")
    assert "--python-version=3.13" in args
    assert "--abi=cp313" in args
    assert "--platform=manylinux_2_17_aarch64" in args
    assert "--platform=manylinux_2_28_aarch64" in args
    assert "--only-binary=:all:" in args
    assert not [a for a in args if "x86_64" in a]
    with pytest.raises(wheelhouse.WheelhouseError, match="bad target"):
        wheelhouse.target_args("py3-x86_64")


def test_an_incomplete_wheelhouse_is_refused_before_anything_is_packed(
    paxmr_wheel: Path, tmp_path: Path
) -> None:
    house = tmp_path / "cp313-x86_64"
    house.mkdir()
    (house / paxmr_wheel.name).write_bytes(paxmr_wheel.read_bytes())
    # paxmr alone: its dependencies (msgpack, pydantic, ...) and pip are missing.
    with pytest.raises(wheelhouse.WheelhouseError, match="install failed"):
        wheelhouse.resolve_offline(sys.executable, house, "cp313-x86_64", "paxmr==0.1.0")


def test_a_built_target_is_reused_and_a_changed_one_rebuilt(
    paxmr_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    house = cache / "cp311-x86_64"
    house.mkdir(parents=True)
    (house / paxmr_wheel.name).write_bytes(paxmr_wheel.read_bytes())
    tarball = cache / "cp311-x86_64.tar"
    wheelhouse.pack([house / paxmr_wheel.name], tarball)
    first = tarball.read_bytes()
    wheelhouse.pack([house / paxmr_wheel.name], tarball)
    assert tarball.read_bytes() == first  # byte-identical: the hosts see no change
    (house / ".built").write_text(
        f"format {wheelhouse.FORMAT}\npaxmr {paxmr_wheel.name} {wheelhouse.sha256(paxmr_wheel)}\n"
        f"tar {wheelhouse.sha256(tarball)}\n"
    )
    # Current: pip is not even started (this Python does not exist).
    assert not wheelhouse.build("/nonexistent/python", paxmr_wheel, cache, "cp311-x86_64", [])
    # A tarball that no longer matches its record is rebuilt, here with no index: refused.
    tarball.write_bytes(first + b"\0")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(wheelhouse.WheelhouseError, match="download failed"):
        wheelhouse.build(sys.executable, paxmr_wheel, cache, "cp311-x86_64", [])
    assert not (house / ".built").exists()
