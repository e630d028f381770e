"""The CLI's exit codes: 0 ok, 1 error, 2 usage, 3 service not running, 4 permission denied."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import PAXMR, clean_env, ok, ok_json, paxmr
from tests.support.local import Cluster, Node, start_cluster, stop_cluster

pytestmark = pytest.mark.integration

NOBODY = ("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups")


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["map"],
        ["map", "a", "b"],
        ["-o", "yaml", "status"],
        ["status", "--bogus-flag"],
    ],
)
def test_usage_errors_exit_2(node: Node, argv: list[str]) -> None:
    result = node.cli(*argv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()


def test_help_exits_0() -> None:
    result = paxmr("--help")
    assert result.returncode == 0
    assert "map" in result.stdout
    assert "shell" in result.stdout


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('mappers = "many"\n', "mappers"),
        ("mapers = 2\n", "mapers"),
        ("[limits]\ncontrol_line_bytes = 1\n", "limits.control_line_bytes"),
        ("node_id = = 1\n", "not valid TOML"),
        ('node_id = 4\n[[nodes]]\nid = 1\nhost = "h"\nport = 1\n', "at least 2 members"),
    ],
)
def test_bad_config_exits_1_naming_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(text)
    # One command per config; the first config also through a job command and JSON output.
    commands = [["status"]] + ([["-o", "json", "map", "f"]] if field == "mappers" else [])
    for argv in commands:
        result = paxmr("-c", config, *argv)
        assert result.returncode == 1, result.stderr
        assert str(config) in result.stderr
        assert field in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


def test_missing_config_exits_1(tmp_path: Path) -> None:
    result = paxmr("-c", tmp_path / "nope.toml", "status")
    assert result.returncode == 1
    assert f"{tmp_path / 'nope.toml'}: config file not found" in result.stderr


def test_config_from_environment(node: Node) -> None:
    result = paxmr("-o", "json", "status", env=clean_env({"PAXMR_CONFIG": str(node.config)}))
    assert json.loads(ok(result).stdout)["node"] == 1


@pytest.fixture
def stopped_cluster() -> Iterator[Cluster]:
    """A two-node cluster that ran and was taken down with ``paxmr local down``."""
    root = Path(tempfile.mkdtemp(prefix="paxmr-down-"))
    try:
        c = start_cluster(root, nodes=2, mappers=1)
        (c.nodes[0].data / "f.txt").write_bytes(b"a b\n")
        ok(c.nodes[0].cli("map", "f.txt"))
        down = ok(stop_cluster(root))
        assert "stopped" in down.stdout
        yield c
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def test_services_down_exit_3(stopped_cluster: Cluster) -> None:
    n = stopped_cluster.nodes[0]
    for argv in (["map", "f.txt"], ["run", "f.txt"], ["reduce", "f.txt_I_1"]):
        result = n.cli(*argv)
        assert result.returncode == 3, (argv, result.stderr)
        assert "service not running" in result.stderr
        assert "Traceback" not in result.stderr
    done = n.cli("-o", "json", "status")  # status reports, and its exit code says it is down
    assert done.returncode == 3, done.stderr
    status = json.loads(done.stdout)
    assert status["services"]["mapper-1"] == "down"
    assert status["services"]["reducer"] == "down"
    assert status["healthy"] is False
    done = paxmr("-o", "json", "local", "status", "--dir", stopped_cluster.root)
    assert done.returncode == 3, done.stderr
    rows = json.loads(done.stdout)
    assert rows["services"] == []
    assert [n["error"] for n in rows["nodes"]] == ["prm not running"] * 2
    again = ok_json(paxmr("-o", "json", "local", "down", "--dir", stopped_cluster.root))
    assert again == {"stopped": 0}  # down is idempotent


def test_never_started_exit_3(tmp_path: Path) -> None:
    config = tmp_path / "paxmr.toml"
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"x\n")
    config.write_text(f'data_dir = "{data}"\nruntime_dir = "{tmp_path / "run"}"\n')
    result = paxmr("-c", config, "map", "f")
    assert result.returncode == 3
    assert str(tmp_path / "run" / "mapper-1.sock") in result.stderr


def test_permission_denied_exit_4(cluster: Cluster) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed: cannot run the CLI as an unprivileged user")
    probe = subprocess.run([*NOBODY, str(PAXMR), "--version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot run paxmr as nobody: {probe.stderr.decode().strip()}")
    n = cluster.nodes[1]  # node 2: the other tests work on node 1
    sock = n.settings.reducer_socket
    mode = sock.stat().st_mode & 0o777
    sock.chmod(0)
    try:
        result = paxmr("-c", n.config, "reduce", "f_I_1", prefix=NOBODY)
        assert result.returncode == 4, result.stderr
        assert "permission denied" in result.stderr
        assert str(sock) in result.stderr
        done = paxmr("-c", n.config, "-o", "json", "status", prefix=NOBODY)
        assert done.returncode == 4, done.stderr
        assert json.loads(done.stdout)["services"]["reducer"] == "denied"
    finally:
        sock.chmod(mode)
    ok(n.cli("status"))  # root still gets through
