"""Local test hosts (systemd-nspawn containers booting systemd) for paxmr's deploy tier: three
that `up` boots, and two spares that only the tests which need five hosts boot.

Usage (as root): python testbed/testbed.py up|down [--purge]|status|stop H|crash H|boot H|reset H|
cut H|heal H|ssh H [-- CMD]. See ../shared/notes/testbed.md for why it is built the way it is.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("paxmr.testbed")

STATE_DIR = Path("/var/lib/paxmr-testbed")
BRIDGE = "paxmr-br0"
SUBNET_PREFIX = "10.77.0"
CONTROLLER_ADDRESS = f"{SUBNET_PREFIX}.1"
HOSTS = ("paxmr1", "paxmr2", "paxmr3")
# Booted only by a test that needs more hosts (`boot`, `reset`); `down` removes them with the rest.
SPARES = ("paxmr4", "paxmr5")
ALL_HOSTS = HOSTS + SPARES
NFT_TABLE = "paxmr_testbed"
# Short on purpose: a ControlPath must fit in a Unix socket address (108 bytes).
CONTROL_DIR = Path("/run/paxmr-testbed")
# Outside the state dir, which `down --purge` removes while holding it.
LOCK_FILE = Path("/run/lock/paxmr-testbed.lock")
CGROUP_GROUP = "paxmr-testbed"
# The hybrid layout measured in testbed.md; nspawn needs its own group in each of these.
HYBRID_CGROUPS = ("systemd", "unified", "memory", "pids")

TOOLS = {  # command -> Debian package providing it
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "nft": "nftables",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "zstd": "zstd",  # the cached bases are .tar.zst
}
# The suite this machine's apt sources name: its mirror serves every Debian suite (trixie too).
MIRROR_SUITE = "bookworm"
# Owners, modes, device nodes, file capabilities and ACLs of a root filesystem, as they are.
_TAR_KEEP = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls")

# The base packages of a stock-like host: what Debian's cloud images ship that the role or the
# tests use, and nothing more. No python3-venv, no acl, no compiler, as on a fresh cloud VM.
# iputils-ping and procps are in every stock image; the tests use them (ping, ps for testinfra).
STOCK_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "iproute2",
    "sudo",
    "iputils-ping",
    "procps",
)
# Runs inside the freshly bootstrapped base (chroot). Nothing host-specific may stay in it: each
# host makes its own ssh host key on first boot and gets its hostname, machine-id and address
# written onto its own disk. The deploy user stands in for the login user that cloud-init creates
# on a cloud image (admin on Debian, ubuntu on Ubuntu): ssh key only, passwordless sudo.
BASE_SETUP = r"""
set -eu
useradd --create-home --shell /bin/bash deploy
usermod --password '*' deploy
install -d -m 0700 -o deploy -g deploy /home/deploy/.ssh
printf 'deploy ALL=(ALL) NOPASSWD:ALL\n' > /etc/sudoers.d/deploy
chmod 0440 /etc/sudoers.d/deploy
# One ed25519 host key: an RSA key would cost each fresh host seconds on its first boot.
cat > /etc/ssh/sshd_config.d/paxmr-testbed.conf <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
EOF
cat > /etc/systemd/system/ssh-host-keys.service <<'EOF'
[Unit]
Description=Generate this host's own ssh host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
EOF
systemctl enable systemd-networkd.service ssh-host-keys.service
# The console is read-only: an interactive first-boot wizard would wait forever.
systemctl mask systemd-firstboot.service
mkdir -p /var/log/journal
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
rm -f /etc/ssh/ssh_host_* /etc/machine-id /var/lib/dbus/machine-id /etc/hostname \
    /var/lib/systemd/random-seed
: > /etc/resolv.conf
"""


class TestbedError(RuntimeError):
    pass


class CommandFailed(subprocess.CalledProcessError):
    def __str__(self) -> str:
        tail = (self.stderr or self.output or "").strip()[-2000:]
        return f"{super().__str__()}\n{tail}"


@dataclass(frozen=True)
class Recipe:
    """How one kind of host's base is made: a Debian suite, its packages, the setup script."""

    name: str
    suite: str
    packages: tuple[str, ...] = STOCK_PACKAGES
    setup: str = BASE_SETUP

    @property
    def key(self) -> str:
        """The base's cache name: a changed recipe builds a new base."""
        text = "\n".join((self.suite, " ".join(self.packages), self.setup))
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


# Both from the Debian mirror this machine's apt uses; Ubuntu would need an Ubuntu mirror.
RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe("debian12-stock", "bookworm"),  # Python 3.11
        Recipe("debian13-stock", "trixie"),  # Python 3.13
    )
}
# A mixed cluster, two bases to build. PAXMR_TESTBED_RECIPES="paxmr3=debian13-stock" changes it.
DEFAULT_HOST_RECIPES = {
    "paxmr1": "debian12-stock",
    "paxmr2": "debian13-stock",
    "paxmr3": "debian12-stock",
    # The spares reuse the same two bases: they cost no base build.
    "paxmr4": "debian12-stock",
    "paxmr5": "debian13-stock",
}


def host_recipes(spec: str | None = None) -> dict[str, Recipe]:
    """Each host's recipe: the defaults, changed by `host=recipe,...` ($PAXMR_TESTBED_RECIPES)."""
    chosen = dict(DEFAULT_HOST_RECIPES)
    spec = os.environ.get("PAXMR_TESTBED_RECIPES", "") if spec is None else spec
    for item in filter(None, (part.strip() for part in spec.split(","))):
        host, _, name = item.partition("=")
        if host not in chosen or name not in RECIPES:
            raise TestbedError(
                f"bad host recipe {item!r}: hosts are {', '.join(ALL_HOSTS)}, "
                f"recipes {', '.join(RECIPES)}"
            )
        chosen[host] = name
    return {host: RECIPES[name] for host, name in chosen.items()}


def _sh(*cmd: str, input_: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(cmd, input=input_, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise CommandFailed(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc.stdout


def _debian_mirror() -> str:
    """The Debian mirror this machine's apt already uses (CI may only reach that one)."""
    sources = Path("/etc/apt")
    for path in sorted(sources.glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if re.match(r"^\w+:", line)
            )
            if MIRROR_SUITE in fields.get("Suites", "").split():
                return fields["URIs"].split()[0]
    for path in [sources / "sources.list", *sorted(sources.glob("sources.list.d/*.list"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                match = re.match(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{MIRROR_SUITE}\s", line)
                if match:
                    return match[1]
    return "http://deb.debian.org/debian"


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _exclusive(
    method: Callable[Concatenate[Testbed, _P], _R],
) -> Callable[Concatenate[Testbed, _P], _R]:
    """One change at a time across processes: two concurrent `up`s must not boot a disk twice."""

    @functools.wraps(method)
    def locked(self: Testbed, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._lock_depth:  # re-entered (down -> stop -> crash): already held
            return method(self, *args, **kwargs)
        reason = self.unavailable_reason()
        if reason:
            raise TestbedError(reason)
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        with LOCK_FILE.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                self._lock_depth -= 1

    return locked


class Testbed:
    """Systemd hosts paxmr1..3 at 10.77.0.11..13 on bridge paxmr-br0 (`hosts`, which `up` boots)
    and the spares paxmr4, paxmr5 at .14, .15 (`spares`, booted on demand), reachable over ssh,
    each booted from its recipe's base (`host_recipes`: Debian 12 and 13 as stock cloud images)."""

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, state_dir: Path | str = STATE_DIR) -> None:
        self.state_dir = Path(state_dir)
        self.hosts: list[str] = list(HOSTS)
        self.spares: list[str] = list(SPARES)
        self.recipes = host_recipes()
        self.key = self.state_dir / "id_ed25519"
        self._lock_depth = 0
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # nspawns started by this object

    # -- queries ---------------------------------------------------------------------------------

    @staticmethod
    def unavailable_reason() -> str | None:
        """None when the hosts can run here, else why they cannot."""
        if platform.system() != "Linux":
            return f"the test hosts need Linux (this is {platform.system()})"
        if os.geteuid() != 0:
            return "the test hosts need root (systemd-nspawn, overlay mounts, bridge, nftables)"
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing and shutil.which("apt-get") is None:
            return f"missing {', '.join(missing)} and no apt-get to install them"
        if not Path("/sys/fs/cgroup").is_dir():
            return "no cgroup filesystem at /sys/fs/cgroup"
        if "overlay" not in Path("/proc/filesystems").read_text() and not shutil.which("modprobe"):
            return "the kernel has no overlay filesystem"
        return None

    @property
    def all_hosts(self) -> list[str]:
        return [*self.hosts, *self.spares]

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    def address(self, host: str) -> str:
        return f"{SUBNET_PREFIX}.1{self._index(host)}"

    def is_running(self, host: str) -> bool:
        return self._nspawn_pid(host) is not None

    def cut_from(self, host: str) -> list[str]:
        """The peers `host` cannot currently exchange packets with."""
        pairs = self._cut_pairs()
        return [
            peer
            for peer in self.all_hosts
            if (self.address(host), self.address(peer)) in pairs
            or (self.address(peer), self.address(host)) in pairs
        ]

    def status(self) -> list[dict[str, object]]:
        return [
            {
                "host": host,
                "running": self.is_running(host),
                "pid": self._nspawn_pid(host),
                "address": self.address(host),
                "recipe": self.recipes[host].name,
                "cut_from": self.cut_from(host),
            }
            for host in self.all_hosts
        ]

    # -- lifecycle -------------------------------------------------------------------------------

    @_exclusive
    def up(self) -> None:
        """Build what is missing and boot the hosts not running yet; running ones are left alone,
        unless an older testbed.py started them with other nspawn options (then they reboot)."""
        self._prepare()
        self._ensure_bases([host for host in self.hosts if not self.is_running(host)])
        started = []
        for host in self.hosts:
            if self.is_running(host) and not self._started_as_now(host):
                log.info("%s: started with other nspawn options; rebooting it", host)
                self.stop(host)
            if not self.is_running(host):
                self._ensure_disk(host)
                self._start(host)
                started.append(host)
        for host in started:
            self.wait_ssh(host)

    @_exclusive
    def down(self, purge: bool = False) -> None:
        """Remove hosts, disks, network and ssh config; `purge` also drops the cached bases."""
        for host in self.all_hosts:
            self.stop(host)
            self._remove_disk(host)
        for group in self._cgroup_dirs(None):
            _remove_cgroup(group)
        with contextlib.suppress(FileNotFoundError):
            self.state_dir.joinpath("hosts").rmdir()
        self._drop_unused_bases()
        self._remove_network()
        self.ssh_config.unlink(missing_ok=True)
        shutil.rmtree(CONTROL_DIR, ignore_errors=True)
        if purge:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    @_exclusive
    def stop(self, host: str, timeout: float = 60) -> None:
        """Clean poweroff: nspawn turns SIGTERM into a shutdown request to the host's systemd."""
        pid = self._nspawn_pid(host)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            if not _wait_until(lambda: not _pid_alive(pid), timeout):
                log.warning("%s did not power off in %ss; killing it", host, timeout)
                self.crash(host)
        self._close_master(host)

    @_exclusive
    def crash(self, host: str) -> None:
        """SIGKILL the host's PID 1: the whole host dies at once, no shutdown, disk kept as is."""
        pid = self._nspawn_pid(host)
        if pid is not None:
            init = self._container_init(pid)
            os.kill(init if init is not None else pid, signal.SIGKILL)
            if not _wait_until(lambda: not _pid_alive(pid), 30):
                raise TestbedError(f"{host}: nspawn (pid {pid}) still alive 30 s after the crash")
        self._close_master(host)

    @_exclusive
    def boot(self, host: str, timeout: float = 60) -> None:
        """Start a stopped or crashed host again on its own disk and wait for its sshd."""
        if not self.is_running(host):
            self._prepare()
            self._ensure_disk(host)
            self._start(host)
        self.wait_ssh(host, timeout)

    @_exclusive
    def reset(self, host: str, timeout: float = 60) -> None:
        """Power the host off and boot it on a fresh disk from its base: a newly created VM at
        the same address (ssh host key and machine-id new too)."""
        self.stop(host)
        self._remove_disk(host)
        self.boot(host, timeout)

    # -- faults on the network -------------------------------------------------------------------

    @_exclusive
    def cut(self, host: str) -> None:
        """Drop all packets between `host` and its peers; the controller still reaches it."""
        peers = [peer for peer in self.all_hosts if peer != host]
        pairs = self._cut_pairs()
        for peer in peers:
            pairs |= {
                (self.address(host), self.address(peer)),
                (self.address(peer), self.address(host)),
            }
        self._set_cut_pairs(pairs)

    @_exclusive
    def heal(self, host: str) -> None:
        """Restore every link of `host` (links between other hosts stay cut)."""
        addr = self.address(host)
        self._set_cut_pairs({pair for pair in self._cut_pairs() if addr not in pair})

    @_exclusive
    def heal_all(self) -> None:
        self._set_cut_pairs(set())

    # -- ssh -------------------------------------------------------------------------------------

    def run(
        self, host: str, cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on `host` as deploy (sudo for root), over the shared ssh master."""
        CONTROL_DIR.mkdir(mode=0o700, exist_ok=True)
        argv = ["ssh", "-F", str(self.ssh_config), host, "--", cmd]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise CommandFailed(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def wait_ssh(self, host: str, timeout: float = 60) -> None:
        """Wait until `host`'s sshd accepts the deploy key; on timeout show its console log."""
        start = time.monotonic()
        deadline = start + timeout
        seen_running = start
        while time.monotonic() < deadline:
            if self.is_running(host):
                seen_running = time.monotonic()
            elif time.monotonic() - seen_running > 2:  # not just between two boots of a reboot
                raise TestbedError(f"{host} is not running\n{self._console_tail(host)}")
            if self._port_open(host) and self._ssh_probe(host):
                log.info("%s: ssh ready in %.1f s", host, time.monotonic() - start)
                return
            time.sleep(0.2)
        raise TestbedError(
            f"{host}: sshd did not answer within {timeout} s\n{self._console_tail(host)}"
        )

    # -- internals: installation and base ------------------------------------------------------

    def _prepare(self) -> None:
        """What all hosts share: tools, key, network, ssh config (the base is built on demand)."""
        self._ensure_tools()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_key()
        self._ensure_network()
        self._write_ssh_config()

    def _ensure_tools(self) -> None:
        if all(shutil.which(tool) for tool in TOOLS):
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        log.info("installing %s", " ".join(sorted(set(TOOLS.values()))))
        # A stale third-party source must not stop us: the Debian mirror is what we need.
        subprocess.run(["apt-get", "-q", "update"], env=env, check=False, capture_output=True)
        subprocess.run(
            [
                "apt-get",
                "-q",
                "-y",
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
                "install",
                "--no-install-recommends",
                *sorted(set(TOOLS.values())),
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def _base_dir(self, key: str) -> Path:
        return self.state_dir / "base" / key

    def _base_tarball(self, key: str) -> Path:
        return self.state_dir / "cache" / f"{key}.tar.zst"

    def _ensure_bases(self, hosts: list[str]) -> None:
        """The bases that `hosts`' disks will sit on, all at once: on a machine without cached
        bases (CI) debootstrap waits on the mirror and on dpkg much of the time, so building
        Debian 12 and 13 side by side takes about as long as the longer of the two alone."""
        recipes = {}
        for host in hosts:
            record = self._host_dir(host) / "base"
            recipe = self.recipes[host]
            # A disk on another base keeps it (_ensure_disk): nothing to build for that one.
            if not record.exists() or record.read_text().strip() == recipe.key:
                recipes[recipe.key] = recipe
        missing = [r for r in recipes.values() if not self._base_dir(r.key).is_dir()]
        if missing:
            with ThreadPoolExecutor(len(missing)) as pool:
                list(pool.map(self._ensure_base, missing))  # list(): re-raise a failed build

    def _ensure_base(self, recipe: Recipe) -> Path:
        """The recipe's base rootfs: unpacked from its cached tarball (seconds), else built with
        debootstrap (1-2 minutes) and its tarball cached for next time."""
        base = self._base_dir(recipe.key)
        if base.is_dir():  # only ever appears by the rename below, complete
            return base
        tmp = base.with_name(base.name + ".tmp")
        _discard_partial(tmp)
        tmp.mkdir(parents=True)
        start = time.monotonic()
        tarball = self._base_tarball(recipe.key)
        if tarball.exists():
            _sh("tar", *_TAR_KEEP, "--zstd", "-x", "-f", str(tarball), "-C", str(tmp))
            tmp.rename(base)
            log.info("base %s unpacked in %.1f s", recipe.key, time.monotonic() - start)
            return base
        mirror = _debian_mirror()
        log.info("building base %s from %s (1-2 minutes)", recipe.key, mirror)
        _sh(
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(recipe.packages)}",
            recipe.suite,
            str(tmp),
            mirror,
        )
        _sh("chroot", str(tmp), "/bin/sh", "-c", recipe.setup)
        built = time.monotonic()
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_name(tarball.name + ".tmp")
        _sh("tar", *_TAR_KEEP, "--zstd", "-c", "-f", str(partial), "-C", str(tmp), ".")
        partial.rename(tarball)
        tmp.rename(base)
        log.info(
            "base %s built in %.0f s, cached as %s (%.0f MB) in %.0f s",
            recipe.key,
            built - start,
            tarball,
            tarball.stat().st_size / 1e6,
            time.monotonic() - built,
        )
        return base

    def _drop_unused_bases(self) -> None:
        """Unpacked bases go once no host disk sits on them; their tarballs stay (`--purge`)."""
        used = set()
        for host in self.all_hosts:
            with contextlib.suppress(FileNotFoundError):
                used.add((self._host_dir(host) / "base").read_text().strip())
        wanted = {recipe.key for recipe in RECIPES.values()}
        for base in self.state_dir.joinpath("base").glob("*"):
            if base.name not in used:
                log.info("removing unpacked base %s", base.name)
                _discard_partial(base)
        for tarball in self.state_dir.joinpath("cache").glob("*"):
            if tarball.name.removesuffix(".tar.zst") not in wanted:  # an old recipe's
                log.info("removing cached base %s", tarball.name)
                tarball.unlink()

    def _ensure_key(self) -> None:
        if not self.key.exists():
            _sh(
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "paxmr-testbed",
                "-f",
                str(self.key),
            )

    # -- internals: hosts --------------------------------------------------------------------------

    def _index(self, host: str) -> int:
        if host not in self.all_hosts:
            raise TestbedError(f"unknown host {host!r}; the hosts are {', '.join(self.all_hosts)}")
        return self.all_hosts.index(host) + 1

    def _host_dir(self, host: str) -> Path:
        return self.state_dir / "hosts" / host

    def _ensure_disk(self, host: str) -> None:
        """Mount the host's overlay disk (its own upper dir on a base); create it once."""
        hdir = self._host_dir(host)
        root = hdir / "root"
        record = hdir / "base"  # written last: a disk without it was never finished
        recipe = self.recipes[host]
        if record.exists() and record.read_text().strip() != recipe.key:
            log.warning(
                "%s: its disk sits on base %s, not %s (its recipe); `down` to rebuild it",
                host,
                record.read_text().strip(),
                recipe.key,
            )
        if record.exists() and self._base_dir(record.read_text().strip()).is_dir():
            base = self._base_dir(record.read_text().strip())
        elif record.exists() and record.read_text().strip() == recipe.key:
            base = self._ensure_base(recipe)  # unpacked again from its tarball
        else:
            self._remove_disk(host)
            base = self._ensure_base(recipe)
        for sub in ("upper", "work", "root"):
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        if not root.is_mount():
            _sh(
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={base},upperdir={hdir / 'upper'},workdir={hdir / 'work'}",
                str(root),
            )
        if not record.exists():
            self._personalize(host, root)
            record.write_text(base.name + "\n")

    def _remove_disk(self, host: str) -> None:
        root = self._host_dir(host) / "root"
        if root.is_mount():
            _sh("umount", str(root))
        shutil.rmtree(self._host_dir(host), ignore_errors=True)
        for group in self._cgroup_dirs(host):
            _remove_cgroup(group)

    def _personalize(self, host: str, root: Path) -> None:
        (root / "etc/hostname").write_text(host + "\n")
        # Also pins the machine-id so the journal stays one directory across boots.
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        peers = "".join(f"{self.address(h)}\t{h}\n" for h in self.all_hosts)
        (root / "etc/hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
            f"{CONTROLLER_ADDRESS}\tcontroller\n{peers}"
        )
        (root / "etc/systemd/network/10-paxmr-testbed.network").write_text(
            "[Match]\nName=host0\n\n[Network]\n"
            f"Address={self.address(host)}/24\nGateway={CONTROLLER_ADDRESS}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        ssh_dir = root / "home/deploy/.ssh"
        keys = ssh_dir / "authorized_keys"
        keys.write_text(self.key.with_suffix(".pub").read_text())
        keys.chmod(0o600)
        os.chown(keys, ssh_dir.stat().st_uid, ssh_dir.stat().st_gid)

    def _cgroup_dirs(self, host: str | None) -> list[Path]:
        """This host's cgroup in every hierarchy nspawn uses (or the testbed's parent group)."""
        top = Path("/sys/fs/cgroup")
        roots = (
            [top]
            if (top / "cgroup.controllers").exists()  # pure cgroup v2
            else [top / name for name in HYBRID_CGROUPS if (top / name).is_dir()]
        )
        return [r / CGROUP_GROUP / host if host else r / CGROUP_GROUP for r in roots]

    def _start(self, host: str) -> None:
        hdir = self._host_dir(host)
        groups = self._cgroup_dirs(host)
        for group in groups:
            group.mkdir(parents=True, exist_ok=True)
        # The shell moves itself into the host's own cgroups before it runs nspawn: started from
        # a shared cgroup, every host's payload would land in one shared payload/ group. It then
        # restarts nspawn when the host reboots itself (exit 133), as systemd-nspawn@.service does.
        script = (
            'for g in $CGROUPS; do echo $$ > "$g/cgroup.procs"; done; '
            'while "$@"; [ $? = 133 ]; do :; done'
        )
        nspawn = [shutil.which("systemd-nspawn") or "systemd-nspawn", *self._nspawn_options(host)]
        console = hdir / "console.log"
        with console.open("a") as out:
            out.write(f"\n==== boot {time.strftime('%Y-%m-%dT%H:%M:%S')} ====\n")
            out.flush()
            proc = subprocess.Popen(
                ["sh", "-c", script, "sh", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the CLI and ignores its terminal's signals
                env={
                    **os.environ,
                    "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
                    "CGROUPS": " ".join(map(str, groups)),  # /sys/fs/cgroup/...: no spaces
                },
            )
        self._children[host] = proc
        if not _wait_until(lambda: self.is_running(host) or proc.poll() is not None, 10, 0.01):
            raise TestbedError(f"{host}: nspawn did not start\n{self._console_tail(host)}")
        log.info("%s: started (nspawn pid %s)", host, self._nspawn_pid(host))

    def _nspawn_options(self, host: str) -> list[str]:
        return [
            "--register=no",
            "--keep-unit",
            f"--directory={self._host_dir(host) / 'root'}",
            f"--machine={host}",
            "--boot",
            f"--network-bridge={BRIDGE}",
            "--console=read-only",
            "--resolv-conf=off",
            "--link-journal=no",
            # nspawn's seccomp filter refuses bpf() (EPERM) by default, so the hosts' systemd
            # cannot attach cgroup BPF programs and silently starts units without their
            # IPAddressAllow=/IPAddressDeny= firewall (measured: the controller reached a peer
            # port that denied it). A cloud VM's systemd can; so can these hosts with bpf()
            # allowed. The hosts have CAP_SYS_ADMIN and CAP_NET_ADMIN in their namespace.
            "--system-call-filter=bpf",
        ]

    def _started_as_now(self, host: str) -> bool:
        """Whether the running nspawn of `host` has the options this testbed.py gives."""
        pid = self._nspawn_pid(host)
        if pid is None:
            return False
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            return argv[1 : 1 + len(self._nspawn_options(host))] == self._nspawn_options(host)
        return False

    def _nspawn_pid(self, host: str) -> int | None:
        """The live nspawn running this host's disk: the recorded PID, else found in /proc."""
        child = self._children.get(host)
        if child is not None and child.poll() is not None:  # reaps it: no zombie left behind
            del self._children[host]
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int((self._host_dir(host) / "nspawn.pid").read_text())
            if self._is_nspawn_of(host, pid):
                return pid
        # The record is stale after the host rebooted itself (a new nspawn), or if its PID was
        # recycled: an unnoticed container would keep the disk and the veth name busy.
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_nspawn_of(host, int(entry.name)):
                (self._host_dir(host) / "nspawn.pid").write_text(f"{entry.name}\n")
                return int(entry.name)
        return None

    def _is_nspawn_of(self, host: str, pid: int) -> bool:
        if not _pid_alive(pid):
            return False
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            return False
        root = str(self._host_dir(host) / "root").encode()
        return argv[0].endswith(b"systemd-nspawn") and any(a.endswith(root) for a in argv)

    @staticmethod
    def _container_init(nspawn_pid: int) -> int | None:
        """The host's PID 1 as seen from the controller: nspawn's child."""
        with contextlib.suppress(FileNotFoundError):
            children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
            if children:
                return int(children[0])
        return None

    def _console_tail(self, host: str, lines: int = 40) -> str:
        console = self._host_dir(host) / "console.log"
        if not console.exists():
            return f"(no console log at {console})"
        # The console is a tty: drop its colour codes, carriage returns and blank lines.
        text = re.sub(r"\x1b\[[0-9;]*m|\r", "", console.read_text(errors="replace"))
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return f"--- last {len(tail)} lines of {console} ---\n" + "\n".join(tail)

    # -- internals: network ----------------------------------------------------------------------

    def _ensure_network(self) -> None:
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            _sh("ip", "link", "add", BRIDGE, "type", "bridge")
            _sh("ip", "address", "add", f"{CONTROLLER_ADDRESS}/24", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")
        if f"bridge {NFT_TABLE}" not in _sh("nft", "list", "tables"):
            # The bridge forward hook sees exactly the host<->host frames; cut pairs drop there.
            _sh(
                "nft",
                "-f",
                "-",
                input_=f"""
table bridge {NFT_TABLE} {{
    set cut {{ type ipv4_addr . ipv4_addr; }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        ip saddr . ip daddr @cut drop
    }}
}}
""",
            )
        if f"inet {NFT_TABLE}" not in _sh("nft", "list", "tables"):
            # Nothing is routed into or out of the bridge (even if ip_forward gets turned on), and
            # the hosts may reach the controller only at its bridge address.
            _sh(
                "nft",
                "-f",
                "-",
                input_=f"""
table inet {NFT_TABLE} {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        iifname "{BRIDGE}" oifname != "{BRIDGE}" drop
        oifname "{BRIDGE}" iifname != "{BRIDGE}" drop
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname "{BRIDGE}" ip daddr != {{ {CONTROLLER_ADDRESS}, {SUBNET_PREFIX}.255 }} drop
    }}
}}
""",
            )

    @staticmethod
    def _remove_network() -> None:
        if shutil.which("nft"):
            for family in ("bridge", "inet"):
                _sh("nft", "delete", "table", family, NFT_TABLE, check=False)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            _sh("ip", "link", "delete", BRIDGE)

    def _cut_pairs(self) -> set[tuple[str, str]]:
        out = _sh("nft", "-j", "list", "set", "bridge", NFT_TABLE, "cut", check=False)
        if not out:
            return set()
        pairs: set[tuple[str, str]] = set()
        for item in json.loads(out)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                src, dst = elem["concat"]
                pairs.add((src, dst))
        return pairs

    def _set_cut_pairs(self, pairs: set[tuple[str, str]]) -> None:
        if f"bridge {NFT_TABLE}" not in _sh("nft", "list", "tables"):
            if pairs:
                raise TestbedError("the testbed's network is not up: run `up` first")
            return  # nothing is cut when there is no network
        # One nft transaction, so a heal never briefly opens links that stay cut.
        batch = f"flush set bridge {NFT_TABLE} cut\n"
        if pairs:
            elems = ", ".join(f"{s} . {d}" for s, d in sorted(pairs))
            batch += f"add element bridge {NFT_TABLE} cut {{ {elems} }}\n"
        _sh("nft", "-f", "-", input_=batch)

    # -- internals: ssh --------------------------------------------------------------------------

    def _write_ssh_config(self) -> None:
        CONTROL_DIR.mkdir(mode=0o700, exist_ok=True)
        entries = [
            # The address too: Ansible's inventory may connect by ansible_host, not by name.
            f"Host {host} {self.address(host)}\n"
            f"    HostName {self.address(host)}\n"
            "    User deploy\n"
            f"    IdentityFile {self.key}\n"
            "    IdentitiesOnly yes\n"
            "    StrictHostKeyChecking no\n"
            "    UserKnownHostsFile /dev/null\n"
            "    BatchMode yes\n"
            "    ConnectTimeout 5\n"
            "    ServerAliveInterval 5\n"
            "    ServerAliveCountMax 3\n"
            "    ControlMaster auto\n"
            f"    ControlPath {CONTROL_DIR}/%C\n"
            "    ControlPersist 60s\n"
            "    LogLevel ERROR\n"
            for host in self.all_hosts
        ]
        self.ssh_config.write_text("\n".join(entries))

    def _port_open(self, host: str) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((self.address(host), 22)) == 0

    def _ssh_probe(self, host: str) -> bool:
        # No master while probing: a master opened against a half-booted host could go stale.
        probe = ["-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ConnectTimeout=2"]
        argv = ["ssh", "-F", str(self.ssh_config), *probe, host, "true"]
        proc = subprocess.run(argv, capture_output=True, check=False, stdin=subprocess.DEVNULL)
        return proc.returncode == 0

    def _close_master(self, host: str) -> None:
        """A master to a dead host makes every later client hang: close it with the host."""
        if self.ssh_config.exists():
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    ["ssh", "-F", str(self.ssh_config), "-O", "exit", host],
                    capture_output=True,
                    check=False,
                    timeout=10,
                )


def _discard_partial(tree: Path) -> None:
    """Remove a base, even an interrupted build where debootstrap left /proc, /sys mounted."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{tree}/")), reverse=True):
        _sh("umount", "--lazy", mount, check=False)
    shutil.rmtree(tree, ignore_errors=True)


def _remove_cgroup(group: Path) -> None:
    """rmdir a cgroup tree bottom-up (nspawn leaves empty sub-groups behind)."""
    if not group.is_dir():
        return
    for sub in sorted((p for p in group.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        group.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testbed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="build (cached) and boot paxmr1..3 (not the spares); idempotent")
    down = sub.add_parser("down", help="remove the hosts, their disks and the network")
    down.add_argument("--purge", action="store_true", help="also drop the cached bases")
    sub.add_parser("status", help="per host: running, nspawn pid, address, cut from")
    for name, text in (
        ("stop", "clean poweroff"),
        ("crash", "SIGKILL the host's PID 1"),
        ("boot", "start on the same disk and wait for ssh"),
        ("reset", "power off, then boot on a fresh disk"),
        ("cut", "drop packets between the host and its peers"),
        ("heal", "restore the host's links"),
    ):
        sub.add_parser(name, help=text).add_argument("host", choices=ALL_HOSTS)
    ssh = sub.add_parser("ssh", help="ssh to a host as deploy (ssh H -- CMD)")
    ssh.add_argument("host", choices=ALL_HOSTS)
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="testbed: %(message)s")

    bed = Testbed()
    start = time.monotonic()
    try:
        if args.command == "up":
            bed.up()
        elif args.command == "down":
            bed.down(purge=args.purge)
        elif args.command == "status":
            for row in bed.status():
                cut = ",".join(row["cut_from"]) if row["cut_from"] else "-"  # type: ignore[arg-type]
                state = "running" if row["running"] else "down"
                print(
                    f"{row['host']}\t{state}\tpid={row['pid'] or '-'}\t{row['address']}\t"
                    f"{row['recipe']}\tcut={cut}"
                )
            return 0
        elif args.command == "ssh":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            os.execvp("ssh", ["ssh", "-F", str(bed.ssh_config), args.host, *cmd])  # noqa: S606
        else:
            getattr(bed, args.command)(args.host)
    except (TestbedError, subprocess.CalledProcessError) as err:
        print(f"testbed: {err}", file=sys.stderr)
        return 1
    log.info("%s done in %.1f s", args.command, time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
