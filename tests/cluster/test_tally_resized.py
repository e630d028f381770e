"""A tally that grows or shrinks between the PRM's size check and its read is refused, on a real
cluster: "changed while it was read; nothing was replicated" (tallyvalue.encode's ``size``).

The reader is the PRM itself for a tally of 64 KB or less (encoded on its event loop), a worker
process of its pool for a larger one. strace, attached to the PRM and every process under it,
stops whichever of them seeks to the tally's start, after that seek (SIGSTOP): the size was
checked (fstat) before it, nothing was read yet. The test then resizes the file and lets the
reader go on: both of its passes see the new size consistently, so only the size check can tell.
The order is fixed by the test, not by timing: the product has no hook for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.local import Cluster, Node, running_cluster
from tests.support.wait import CONVERGE_S, wait_until

pytestmark = pytest.mark.integration

INLINE = 16 * 1024  # encoded on the PRM's event loop (at most 64 KB)
WORKER = 256 * 1024  # encoded by a worker process
EXTRA = b"zz\t1\n"  # a valid last line: the grown file is a tally too, only larger


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: cannot stop the PRM at its read")
    with running_cluster() as c:
        yield c


def _tally(size: int) -> bytes:
    """A valid tally of about ``size`` bytes; its words sort before EXTRA's."""
    return b"paxmr-tally 1\n" + b"".join(b"w%07d\t1\n" % i for i in range(size // 11))


def _under(pid: int) -> list[int]:
    """``pid`` and every process under it (the PRM's worker processes)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            parents[int(stat.parent.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    family = [pid]
    for p in family:  # grows while it is walked
        family += [child for child, parent in parents.items() if parent == p]
    return family


def _traced_by(tracer: int, pids: list[int]) -> bool:
    for pid in pids:
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            if f"TracerPid:\t{tracer}\n" not in status.read_text():
                return False
    return True


@contextlib.contextmanager
def stopped_at_first_seek(prm: int, path: Path, out: Path) -> Iterator[Callable[[], int]]:
    """strace on ``prm`` and its processes (new ones too), stopping the first to seek in
    ``path`` after that seek; yields a wait for that stop, which returns the stopped thread's
    id."""
    family = _under(prm)
    strace = subprocess.Popen(
        ["strace", "-f", "-o", str(out), "-e", "trace=lseek", "-P", str(path),
         "-e", "inject=lseek:signal=SIGSTOP:when=1", *(f"-p{p}" for p in family)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def attached() -> bool:
            assert strace.poll() is None, f"strace ended: {strace.communicate()[1]}"
            return _traced_by(strace.pid, family)

        wait_until(attached, "strace attached to the PRM and its processes", interval=0.02)

        def stopped() -> int | None:
            # "<tid>  lseek(<fd>, 0, SEEK_SET) = 0" (only seeks in the file are shown); the
            # reader is stopped once strace shows "<tid>  --- stopped by SIGSTOP ---" for it.
            lines = [line.split(maxsplit=1) for line in out.read_text().splitlines()]
            readers = [int(tid) for tid, what in lines if what.startswith("lseek(")]
            if readers and [str(readers[0]), "--- stopped by SIGSTOP ---"] in lines:
                return readers[0]
            return None

        yield lambda: wait_until(stopped, f"a process stopped at its seek in {path}")
    finally:
        strace.send_signal(signal.SIGINT)  # detaches: every process it traced goes on
        strace.wait(CONVERGE_S)


def _resize(path: Path, change: str) -> None:
    if change == "grown":
        with path.open("ab") as f:
            f.write(EXTRA)
    else:  # to a valid, shorter tally: its first half of lines
        data = path.read_bytes()
        os.truncate(path, data.index(b"\n", len(data) // 2) + 1)


def _follower(cluster: Cluster) -> Node:
    """A follower: the PRM stopped for a moment is not the one that keeps the others' terms."""
    leader = cluster.leader()
    return next(n for n in cluster.nodes if n.id != leader)


@pytest.mark.parametrize("change", ["grown", "shrunk"])
@pytest.mark.parametrize("size", [INLINE, WORKER], ids=["on_the_loop", "in_a_worker"])
def test_a_tally_resized_after_its_size_check_is_refused_and_nothing_lands(
    cluster: Cluster, size: int, change: str, tmp_path: Path
) -> None:
    node = _follower(cluster)
    name = f"resized_{size}_{change}_reduced"
    path = node.data / name
    path.write_bytes(_tally(size))
    cluster.converged()
    entries = node.status()["entries"]
    with stopped_at_first_seek(node.prm_pid(), path, tmp_path / "strace.out") as stopped:
        replicate = node.popen("replicate", name)
        reader = stopped()
        _resize(path, change)
        os.kill(reader, signal.SIGCONT)
        _, err = replicate.communicate(timeout=CONVERGE_S)
    assert replicate.returncode == 1, err
    assert f"{name}: changed while it was read; nothing was replicated [bad_tally]" in err, err
    assert (reader == node.prm_pid()) == (size == INLINE)  # the reader this test meant to stop
    cluster.converged()
    assert {n.status()["entries"] for n in cluster.nodes} == {entries}
    # The file as it is now, read whole: replicated.
    assert node.cli("replicate", name).returncode == 0
