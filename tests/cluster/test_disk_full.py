"""A node's disk fills up under a stream of tallies: its PRM stops (fail-stop: SQLite's
transaction fails whole, and the messages that waited for it are not sent), a restart on the
still-full disk stops again saying why, nothing acknowledged is lost, and once space is freed
the node catches up to the same log.

The node's storage directory is a small tmpfs (root only): a real ENOSPC from the kernel. Which
write meets it first, an accept or the log row of a chosen value, depends on how much of its
WAL SQLite reuses; a PRM that went on after either (its loop survived a failed commit) fails
the wait for it to stop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from paxmr import control, local
from tests.support.local import (
    UNREACHABLE,
    Cluster,
    Node,
    alive,
    all_acked_everywhere,
    service_env,
    sigkill,
    start,
)
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (needs root)"),
]

SMALL = "4m"  # the full node's storage: a dozen of the tallies below
TALLY = "big_reduced"
WORDS = 20_000  # about 300 KB of tally: a few fill SMALL


def _mount(state: Path, size: str, *, remount: bool = False) -> None:
    options = f"remount,size={size}" if remount else f"size={size},mode=0700"
    cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(state)]
    subprocess.run(cmd, check=True)


@pytest.fixture
def cluster() -> Iterator[tuple[Cluster, Path]]:
    root = Path(tempfile.mkdtemp(prefix="paxmr-diskfull-"))
    state = root / "n3" / "state"
    state.mkdir(parents=True)
    _mount(state, SMALL)
    try:
        c = start(root)
        c.leader()
        yield c, state
    finally:
        local.down(root)
        subprocess.run(["umount", str(state)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _big_tally(node: Node) -> None:
    lines = b"".join(b"w%07d\t%d\n" % (i, i % 97 + 1) for i in range(WORDS))
    (node.data / TALLY).write_bytes(b"paxmr-tally 1\n" + lines)


def _replicate(node: Node, acked: dict[str, int]) -> bool:
    rid = uuid.uuid4().hex
    acked[rid] = node.replicate(TALLY, rid)["position"]
    return True


def _not_leading(c: Cluster, node: Node) -> int:
    """The leader, once it is not ``node`` (stopped and resumed until another leads)."""
    while (leader := c.leader()) == node.id:
        assert node.cli("stop").returncode == 0
        c.leader(exclude=node.id)
        assert node.cli("resume").returncode == 0
    return leader


def test_a_full_disk_stops_its_prm_before_it_votes_for_what_it_could_not_write(
    cluster: tuple[Cluster, Path],
) -> None:
    """Node 3, its disk filling, is in every quorum (the third node stopped): it must stop
    before it acknowledges an accept it could not write. The proof: the leader then loses its
    disk, and node 3 with the stopped node must still hold every acknowledged tally."""
    c, state = cluster
    full = c.node(3)
    leader = c.node(_not_leading(c, full))
    other = next(n for n in c.nodes if n.id not in {leader.id, full.id})
    _big_tally(leader)
    pid = full.prm_pid()
    assert other.cli("stop").returncode == 0
    acked: dict[str, int] = {}

    def node_3_stopped() -> bool:
        with contextlib.suppress(control.RemoteError):  # no_quorum once node 3 stops
            _replicate(leader, acked)
        return not alive(pid)

    wait_until(node_3_stopped, "node 3's PRM to stop on its full disk", timeout=120, interval=0)
    assert len(acked) >= 3
    assert shutil.disk_usage(state).free < 512 * 1024
    failure = full.log_events("background_task_failed")
    assert failure, "the stopped PRM logged no reason"
    assert "disk is full" in failure[-1]["error"], failure[-1]

    # Started again on the still-full disk: it stops again at once, saying why.
    with pytest.raises(UNREACHABLE), service_env():
        local.restart(c.root, full.id, "prm")
    assert "No space left on device" in full.prm_log.read_text()

    # The leader's disk is lost; node 3, given space, and the resumed node are a quorum that
    # must hold every acknowledged tally; the leader catches up from them.
    sigkill(leader.prm_pid())
    for f in (c.root / f"n{leader.id}" / "state").glob("prm.db*"):
        f.unlink()
    _mount(state, "64m", remount=True)
    with service_env():
        local.restart(c.root, full.id, "prm")
    assert other.cli("resume").returncode == 0
    c.leader(exclude=leader.id)
    with service_env():
        local.restart(c.root, leader.id, "prm")
    all_acked_everywhere(c, acked)
