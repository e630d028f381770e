"""`paxmr local up` run twice at once on a new directory (two terminals, a script and an
operator): one cluster comes up, founded once, and `paxmr local down` stops every service
either started.

Found by review in session 14: both runs saw no `founded` file, each made up a cluster id and
initialized the nodes whose prm.db it found missing first, so node 1 was founded in one cluster
and nodes 2 and 3 in another (no leader ever: "node 2 belongs to cluster ..."); and the services
the losing run started were refused (prm.lock, the socket check) while those of the winning run
that it had not recorded stayed out of cluster.json, still running after `local down`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import PAXMR, clean_env
from tests.support.local import alive
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def _services(root: Path) -> list[int]:
    """The pids of the live processes started for `root` (their command line names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if any(arg.startswith(f"{root}/".encode()) for arg in argv) and b"serve" in argv:
                found.append(int(entry.name))
    return sorted(found)


def test_two_local_ups_at_once_found_one_cluster_and_record_every_service(tmp_path: Path) -> None:
    root = tmp_path / "c"
    argv = [str(PAXMR), "local", "up", "--mappers", "1", "--dir", str(root)]
    ups = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
        for _ in range(2)
    ]
    try:
        for up in ups:
            up.communicate(timeout=120)
        ids = set()
        for n in (1, 2, 3):
            with contextlib.closing(sqlite3.connect(root / f"n{n}" / "state" / "prm.db")) as db:
                ids.add(db.execute("SELECT cluster_id FROM identity").fetchone()[0])
        assert len(ids) == 1, f"the nodes were founded in {len(ids)} clusters: {ids}"
        recorded = sorted(
            s["pid"] for s in json.loads((root / "cluster.json").read_text())["services"]
        )
        assert _services(root) == recorded, "live services not in cluster.json"
    finally:
        subprocess.run([str(PAXMR), "local", "down", "--dir", str(root)], env=clean_env(),
                       capture_output=True, timeout=60, check=False)  # fmt: skip
        for pid in _services(root):  # those local down could not know of
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not [p for p in _services(root) if alive(p)], "services gone")
