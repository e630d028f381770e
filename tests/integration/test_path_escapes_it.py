"""File names that escape the data directory are refused, and nothing is written outside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from paxmr import control
from tests.support.local import Node

pytestmark = pytest.mark.integration


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b""
        for p in sorted(directory.rglob("*"))
        if not p.is_symlink()
    }


@pytest.fixture
def outside(node: Node) -> Path:
    """A directory next to the data directory, holding a file worth stealing or overwriting."""
    d = node.data.parent / "outside"
    d.mkdir(exist_ok=True)
    (d / "secret.txt").write_bytes(b"top secret words\n")
    (d / "victim_I_1").write_bytes(b"must survive\n")
    (d / "victim_reduced").write_bytes(b"must survive too\n")
    return d


def refused(result: object, *needles: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)  # type: ignore[attr-defined]
    stderr = result.stderr  # type: ignore[attr-defined]
    assert "outside the data directory" in stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in stderr


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("map", "../outside/secret.txt"),
        ("run", "../outside/secret.txt"),
        ("map", "sub/../../outside/secret.txt"),
        ("map", ".."),
        ("run", "/etc/hostname"),
    ],
)
def test_input_escapes_refused(node: Node, outside: Path, command: str, name: str) -> None:
    before = snapshot(outside)
    refused(node.cli(command, name), repr(name))
    assert snapshot(outside) == before
    assert not Path("/etc/hostname_I_1").exists()


def test_symlink_out_refused(node: Node, outside: Path) -> None:
    link = node.data / "innocent_link.txt"
    link.unlink(missing_ok=True)
    link.symlink_to(outside / "secret.txt")
    before = snapshot(outside)
    refused(node.cli("run", link.name))
    assert snapshot(outside) == before


def test_directory_symlink_out_refused(node: Node, outside: Path) -> None:
    link = node.data / "innocent_dir"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    before = snapshot(outside)
    refused(node.cli("map", "innocent_dir/secret.txt"))
    assert snapshot(outside) == before


def test_output_symlink_out_refused_by_mapper(node: Node, outside: Path) -> None:
    """The input is fine, but ``{F}_I_1`` is a planted link to a file outside."""
    (node.data / "victim").write_bytes(b"some words\n")
    planted = node.data / "victim_I_1"
    planted.unlink(missing_ok=True)
    planted.symlink_to(outside / "victim_I_1")
    before = snapshot(outside)
    result = node.cli("map", "victim")
    refused(result, "[path_refused]")
    assert snapshot(outside) == before


def test_reduce_escapes_refused_by_reducer(node: Node, outside: Path) -> None:
    before = snapshot(outside)
    refused(node.cli("reduce", "../outside/victim_I_1"), "[path_refused]")
    refused(node.cli("reduce", str(outside / "victim_I_1")), "[path_refused]")
    assert snapshot(outside) == before


def test_reduced_output_symlink_out_refused(node: Node, outside: Path) -> None:
    (node.data / "victim_I_2").write_bytes(b"paxmr-tally 1\nw\t1\n")
    planted = node.data / "victim_reduced"
    planted.unlink(missing_ok=True)
    planted.symlink_to(outside / "victim_reduced")
    before = snapshot(outside)
    refused(node.cli("reduce", "victim_I_2"), "[path_refused]")
    assert snapshot(outside) == before


@pytest.mark.parametrize("name", ["../outside/secret.txt", "/etc/hostname", "", "."])
def test_mapper_service_refuses_directly(node: Node, outside: Path, name: str) -> None:
    """Past the CLI's own check: the service refuses on its own."""
    before = snapshot(outside)
    with pytest.raises(control.RemoteError) as info:
        control.call(node.settings.mapper_socket(2), "map", {"file": name, "offset": 0, "size": 0})
    assert info.value.code == "path_refused"
    assert snapshot(outside) == before


def test_absolute_name_inside_the_data_directory_is_fine(node: Node) -> None:
    (node.data / "absolute_ok").write_bytes(b"in side\n")
    result = node.cli("map", str(node.data / "absolute_ok"))
    assert result.returncode == 0, result.stderr
    assert (node.data / "absolute_ok_I_1").is_file()
