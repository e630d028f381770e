"""The deployed hosts as an operator sees them: units, sockets, files, config, journal, CLI access."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest

from tests.support.hosts import NODE_IDS, SERVICES, SOCKETS, Cluster

pytestmark = pytest.mark.deploy
HOSTS = list(NODE_IDS)


@pytest.fixture(params=HOSTS)
def host(request: pytest.FixtureRequest, testinfra_hosts: dict[str, Any]) -> Any:
    h = testinfra_hosts[request.param]
    h.name = request.param
    return h


def test_installed_for_the_hosts_own_python_on_a_stock_image(host: Any) -> None:
    py = host.check_output("python3 -c 'import sys; print(*sys.version_info[:2], sep=\"\")'")
    assert host.file(f"/opt/paxmr/venv/bin/python{py[0]}.{py[1:]}").exists
    compiled = host.check_output("ls /opt/paxmr/venv/lib/python*/site-packages/pydantic_core/")
    assert f".cpython-{py}-{host.system_info.arch}-linux-gnu.so" in compiled
    # Nothing was added to the image to get there: no python3-venv, no acl, no pip in the venv.
    for package in ["python3-venv", f"python3.{py[1:]}-venv", "acl"]:
        assert not host.package(package).is_installed, package
    assert not host.file("/opt/paxmr/venv/bin/pip").exists


def test_units_active_and_enabled(host: Any) -> None:
    for unit in ["paxmr.target", *SERVICES, *SOCKETS]:
        service = host.service(unit)
        assert service.is_running, unit
        assert service.is_enabled, unit


def test_sockets_are_group_owned_0660(host: Any) -> None:
    for name in SOCKETS.values():
        sock = host.file(f"/run/paxmr/{name}")
        assert sock.is_socket, name
        assert sock.mode == 0o660, name
        assert sock.group == "paxmr-admin", name


def test_services_run_as_paxmr(host: Any) -> None:
    for unit in SERVICES:
        assert host.check_output(f"systemctl show -P User {unit}") == "paxmr"
        pid = host.check_output(f"systemctl show -P MainPID {unit}")
        assert host.check_output(f"ps -o user= -p {pid}") == "paxmr", unit


def test_directories_and_file_permissions(host: Any) -> None:
    expected = {
        "/var/lib/paxmr/state": ("paxmr", "paxmr", 0o700),
        "/var/lib/paxmr/data": ("paxmr", "paxmr", 0o750),
        "/etc/paxmr": ("root", "root", 0o755),
        "/etc/paxmr/paxmr.toml": ("root", "root", 0o644),
    }
    for path, (user, group, mode) in expected.items():
        f = host.file(path)
        assert (f.user, f.group, f.mode) == (user, group, mode), path
    # The HMAC transport's key is gone (peers authenticate with TLS, test_peer_tls.py).
    assert not host.file("/etc/paxmr/cluster.key").exists


def test_bash_completion_and_manual_page_installed(host: Any) -> None:
    """The role installs what `paxmr` generates: completion that completes, a man page."""
    completion = host.file("/usr/share/bash-completion/completions/paxmr")
    assert (completion.user, completion.mode) == ("root", 0o644)
    # What bash-completion does on the first Tab: source the file, call the function it named.
    words = host.check_output(
        "bash -c 'source /usr/share/bash-completion/completions/paxmr;"
        " COMP_WORDS=(paxmr sta); COMP_CWORD=1; _paxmr_completion paxmr;"
        ' printf "%s\\n" "${COMPREPLY[@]}"\''
    ).split()
    assert words == ["status"], words
    page = host.file("/usr/local/share/man/man1/paxmr.1")
    assert (page.user, page.mode) == ("root", 0o644)
    text = page.content_string
    assert text.startswith(".TH PAXMR 1")
    assert text == host.check_output("paxmr man") + "\n"  # the installed version's own page
    assert "replicate" in text


def test_config_comes_from_the_inventory(host: Any) -> None:
    config = tomllib.loads(host.file("/etc/paxmr/paxmr.toml").content_string)
    assert config["node_id"] == NODE_IDS[host.name]
    assert config["mappers"] == 2
    assert config["nodes"] == [
        {"id": i, "host": f"10.77.0.1{i}", "port": 7400} for i in sorted(NODE_IDS.values())
    ]


def test_security_exposure_on_the_host(host: Any) -> None:
    for unit in SERVICES:
        out = host.check_output(f"systemd-analyze security --no-pager {unit}")
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        assert found, out
        level = float(found[1])
        assert level <= 2.0, f"{unit}: {level}"


def test_verify_installed_units(host: Any) -> None:
    cmd = host.run(f"systemd-analyze verify paxmr.target {' '.join([*SERVICES, *SOCKETS])}")
    assert cmd.rc == 0
    assert cmd.stdout + cmd.stderr == ""


def test_journal_has_json_lines_with_node_and_role(host: Any) -> None:
    # --all: without it journalctl's JSON gives null for a field over 4096 bytes (the PRM's
    # "print" line lists every file of the log, so it outgrows that on a long-lived cluster).
    out = host.check_output(
        "journalctl -o json --all --no-pager -n 200 SYSLOG_IDENTIFIER=paxmr-prm"
    )
    records = [json.loads(line) for line in out.splitlines()]
    assert records
    payloads = [json.loads(r["MESSAGE"]) for r in records if r["MESSAGE"].startswith("{")]
    assert payloads
    assert {p["node"] for p in payloads} == {NODE_IDS[host.name]}
    assert {r["PAXMR_ROLE"] for r in records} == {"prm"}


def test_operators_allowed_others_refused(cluster: Cluster) -> None:
    host = HOSTS[0]
    assert cluster.cli(host, "status", user="deploy").returncode == 0  # in paxmr-admin
    assert cluster.cli(host, "print", user="nobody").returncode == 4  # permission denied
