"""The test hosts themselves: real systemd machines, their network, and the faults they inject."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from testbed.testbed import Testbed
from tests.support.wait import wait_until

# The first test may also build the base (debootstrap, 1-3 minutes) in the session fixture.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]


def _pings(bed: Testbed, src: str, dst: str) -> bool:
    # As root: Debian 13's ping needs net.ipv4.ping_group_range, which systemd-sysctl sets on a VM
    # but cannot set inside a container (its /proc/sys is read-only).
    return bed.run(src, f"sudo ping -c1 -W1 {bed.address(dst)}", check=False).returncode == 0


def test_hosts_and_addresses(testbed: Testbed) -> None:
    assert testbed.hosts == ["paxmr1", "paxmr2", "paxmr3"]
    assert [testbed.address(h) for h in testbed.hosts] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    assert testbed.spares == ["paxmr4", "paxmr5"]  # booted only by the tests that need them
    assert [testbed.address(h) for h in testbed.spares] == ["10.77.0.14", "10.77.0.15"]
    assert testbed.ssh_config.read_text().count("ControlPersist 60s") == 5  # spares too


# What stock Debian cloud images have and lack; the role must cope with exactly this.
STOCK = {"paxmr1": ("12", "3.11"), "paxmr2": ("13", "3.13"), "paxmr3": ("12", "3.11")}


@pytest.mark.parametrize("host", list(STOCK))
def test_hosts_are_stock_debian_images_of_their_recipe(testbed: Testbed, host: str) -> None:
    debian, python = STOCK[host]
    assert testbed.recipes[host].name == f"debian{debian}-stock"
    probe = testbed.run(
        host,
        ". /etc/os-release; echo $VERSION_ID;"
        " python3 -c 'import sys; print(*sys.version_info[:2], sep=\".\")';"
        " python3 -m ensurepip --version >/dev/null 2>&1 && echo ensurepip || echo no-ensurepip;"
        " for tool in setfacl gcc cc pip3; do command -v $tool || echo no-$tool; done",
    ).stdout.split()
    assert probe == [debian, python, "no-ensurepip", "no-setfacl", "no-gcc", "no-cc", "no-pip3"]


def test_up_is_idempotent(testbed: Testbed) -> None:
    before = {row["host"]: row["pid"] for row in testbed.status()}
    testbed.up()
    after = {row["host"]: row["pid"] for row in testbed.status()}
    assert before == after
    # The spares keep whatever state the tests that booted them left (running or powered off).
    assert all(after[host] for host in testbed.hosts)


@pytest.mark.parametrize("host", ["paxmr1", "paxmr2", "paxmr3"])
def test_host_boots_systemd(testbed: Testbed, host: str) -> None:
    out = testbed.run(
        host,
        "hostname; ps -o comm= -p 1; timeout 60 systemctl is-system-running --wait",
        check=False,
        timeout=90,
    )
    name, init, state = out.stdout.split()
    assert (name, init) == (host, "systemd")
    assert state in {"running", "degraded"}, testbed.run(host, "systemctl --failed").stdout
    assert testbed.run(host, "sudo -n id -u").stdout.strip() == "0"


# bpf(BPF_MAP_CREATE) with an all-zero attribute: the kernel answers EINVAL (22); nspawn's default
# seccomp filter answers EPERM (1) before the kernel sees the call.
BPF_PROBE = (
    "import ctypes, platform; libc = ctypes.CDLL(None, use_errno=True);"
    ' nr = {"x86_64": 321, "aarch64": 280}[platform.machine()];'
    " libc.syscall(nr, 0, ctypes.create_string_buffer(128), 128); print(ctypes.get_errno())"
)


@pytest.mark.parametrize("host", ["paxmr1", "paxmr2"])  # one of each recipe
def test_hosts_may_load_bpf_programs(testbed: Testbed, host: str) -> None:
    """systemd inside a host needs bpf() for IPAddressAllow=/IPAddressDeny= (the PRM's allow-list)."""
    errno = testbed.run(host, f"sudo python3 -c '{BPF_PROBE}'").stdout.strip()
    assert errno == "22", f"bpf() refused with errno {errno} before reaching the kernel"


def test_each_host_reaches_its_peers(testbed: Testbed) -> None:
    for src in testbed.hosts:
        for dst in testbed.hosts:
            assert _pings(testbed, src, dst), f"{src} -> {dst}"


def test_hosts_reach_the_controller_only_on_the_bridge(testbed: Testbed) -> None:
    assert testbed.run("paxmr1", "sudo ping -c1 -W1 10.77.0.1", check=False).returncode == 0
    # The controller's other addresses answer pings from anywhere else, but not from the hosts.
    lines = subprocess.run(
        ["ip", "-4", "-o", "address", "show"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    others = [
        line.split()[3].split("/")[0]
        for line in lines
        if line.split()[1] not in {"lo", "paxmr-br0"}
    ]
    for addr in [*others, "1.1.1.1"]:
        assert testbed.run("paxmr1", f"sudo ping -c1 -W1 {addr}", check=False).returncode != 0, addr


def test_cut_isolates_host_from_peers_but_not_controller(testbed: Testbed) -> None:
    try:
        testbed.cut("paxmr3")
        assert testbed.cut_from("paxmr3") == ["paxmr1", "paxmr2", "paxmr4", "paxmr5"]  # spares too
        assert not _pings(testbed, "paxmr3", "paxmr1")
        assert not _pings(testbed, "paxmr2", "paxmr3")
        assert _pings(testbed, "paxmr1", "paxmr2")
        assert testbed.run("paxmr3", "true").returncode == 0
    finally:
        testbed.heal("paxmr3")
    assert testbed.cut_from("paxmr3") == []
    assert _pings(testbed, "paxmr3", "paxmr1")
    assert _pings(testbed, "paxmr2", "paxmr3")


def test_crash_keeps_synced_writes_and_boot_restarts(testbed: Testbed) -> None:
    token = uuid.uuid4().hex
    testbed.run("paxmr2", f"echo {token} > ~/crash-token && sync")
    boots = len(testbed.run("paxmr2", "sudo journalctl --list-boots -q").stdout.splitlines())
    try:
        testbed.crash("paxmr2")
        assert not testbed.is_running("paxmr2")
    finally:
        testbed.boot("paxmr2")
    assert testbed.run("paxmr2", "cat ~/crash-token").stdout.strip() == token
    # The crashed boot stays in the journal: the disk is the same one.
    after = len(testbed.run("paxmr2", "sudo journalctl --list-boots -q").stdout.splitlines())
    assert after == boots + 1


def test_stop_powers_off_cleanly_and_boot_restarts(testbed: Testbed) -> None:
    try:
        testbed.stop("paxmr1")
        assert not testbed.is_running("paxmr1")
        assert testbed.status()[0]["pid"] is None
    finally:
        testbed.boot("paxmr1")
    assert testbed.is_running("paxmr1")
    # --wait: right after ssh answers, units (paxmr's among them) may still be starting.
    state = testbed.run(
        "paxmr1", "timeout 60 systemctl is-system-running --wait", check=False, timeout=90
    ).stdout.strip()
    assert state in {"running", "degraded"}


def test_host_rebooting_itself_comes_back(testbed: Testbed) -> None:
    def boots() -> int:
        out = testbed.run("paxmr3", "sudo journalctl --list-boots -q", check=False, timeout=10)
        return len(out.stdout.splitlines()) if out.returncode == 0 else -1

    before = boots()
    testbed.run("paxmr3", "sudo systemctl reboot", check=False)
    wait_until(
        lambda: boots() == before + 1, "paxmr3 back from its reboot", timeout=60, interval=0.5
    )
    assert testbed.is_running("paxmr3")
