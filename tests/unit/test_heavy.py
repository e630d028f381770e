"""The PRM's worker pools (paxmr/services/heavy.py): admission, a dead worker, merge semantics."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from paxmr import catalog, paxos
from paxmr.logobject import LogObject, merge, show
from paxmr.services import heavy
from paxmr.storage import Storage


def test_a_call_past_the_admission_limit_is_refused_at_once() -> None:
    async def scenario() -> None:
        pool = heavy.Pool("test", 1, limit=1)
        try:
            slow = asyncio.create_task(pool.run(time.sleep, 1.0))
            await asyncio.sleep(0)  # it holds the only place now
            started = time.monotonic()
            with pytest.raises(heavy.Busy, match="limit 1"):
                await pool.run(int, "5")
            assert time.monotonic() - started < 0.5  # refused, not queued behind the sleep
            await slow
            assert await pool.run(int, "5") == 5  # the place is free again
        finally:
            pool.close()

    asyncio.run(scenario())


def test_a_pool_whose_worker_died_works_again() -> None:
    async def scenario() -> None:
        pool = heavy.Pool("test", 1)
        try:
            with pytest.raises(BrokenProcessPool):
                await pool.run(os._exit, 1)
            assert await pool.run(int, "7") == 7
        finally:
            pool.close()

    asyncio.run(scenario())


def _named(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_a_started_pool_has_its_worker_before_its_first_call() -> None:
    """Pool.start: the worker starts now (the PRM's apply pool, once the node serves), not
    with the first call, whose caller would wait for a new interpreter's imports."""

    async def scenario() -> None:
        pool = heavy.Pool("started early", 1)
        try:
            pool.start()
            deadline = time.monotonic() + 60  # an interpreter's start on a loaded host
            while heavy.comm(pool.name) not in {_named(c) for c in heavy.children()}:
                assert time.monotonic() < deadline, "no worker before the first call"
                await asyncio.sleep(0.05)
            assert await pool.run(int, "4") == 4
        finally:
            pool.close()

    asyncio.run(scenario())


def _obj(name: str, words: dict[bytes, int]) -> LogObject:
    return LogObject.from_counts(name, 1, name, sorted(words.items()))


def test_merge_slots_reads_each_position_once_and_counts_repeats(tmp_path: Path) -> None:
    a = _obj("a", {b"x": 2, b"y": 1})
    b = _obj("b", {b"y": 5, b"\xff": 1})
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True)
    entries = [
        paxos.LogEntry(0, "a", a.encode(), 0),
        paxos.LogEntry(1, "", b"", None),
        paxos.LogEntry(2, "b", b.encode(), 1),
        paxos.LogEntry(3, "bad", b"not a log object", 2),
    ]
    storage.commit(paxos.Persist(log=entries))
    storage.close()
    got = heavy.merge_slots(str(db), [(0, 0), (1, 2), (0, 0)], 0)
    want = merge([a, b, a])
    assert got["distinct"] == len(want)
    assert got["total"] == sum(want.values())
    assert got["words"] == [[show(w), n] for w, n in want.most_common()]
    assert heavy.merge_slots(str(db), [(0, 0)], 1)["words"] == [["x", 2]]
    assert "log position 2" in heavy.merge_slots(str(db), [(2, 3)], 0)["error"]


def test_without_worker_processes_the_work_runs_in_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sandbox without POSIX semaphores: the PRM still serves (in threads), it does not fail."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError("no /dev/shm")

    monkeypatch.setattr(heavy, "ProcessPoolExecutor", refuse)
    pool = heavy.Pool("test", 1)
    try:
        assert asyncio.run(pool.run(int, "3")) == 3
        assert pool.threads
    finally:
        pool.close()


def test_workers_end_when_their_parent_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed PRM leaves no worker (nor resource tracker) behind, and no line on stderr."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import asyncio, os\n"
        "from paxmr.services import heavy\n"
        "async def main() -> None:\n"
        "    pool = heavy.Pool('test', 2)\n"
        "    await asyncio.gather(pool.run(int, '1'), pool.run(int, '2'))\n"
        "    print(' '.join(str(c) for c in heavy.children()), flush=True)\n"
        "    os.kill(os.getpid(), 9)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    children = [int(pid) for pid in done.stdout.split()]
    assert len(children) >= 2, done  # the workers and multiprocessing's resource tracker
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, "a worker outlived its parent"
        time.sleep(0.1)
    assert done.stderr == ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_database_is_read_from_any_thread(tmp_path: Path) -> None:
    """Without worker processes the work runs in threads (Pool.threads), and a PRM makes a
    missing summary in its own thread at start-up (_restore_catalog): each thread reads on a
    connection of its own (sqlite3 refuses one made in another thread, and two threads in one
    read transaction would end each other's)."""
    a = _obj("a", {b"x": 2})
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True)
    storage.commit(paxos.Persist(log=[paxos.LogEntry(0, "a", a.encode(), 0)]))
    storage.close()
    assert heavy.stored_summary(str(db), 0, 0) == a.summary(0)
    with ThreadPoolExecutor(1) as other:
        got = other.submit(heavy.merge_slots, str(db), [(0, 0)], 0).result()
    assert got["total"] == 2


def test_a_later_read_sees_the_slots_committed_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read is one snapshot (_snapshot), ended when it is done, even by an error: the
    next one on the same connection sees newer slots."""
    a = _obj("a", {b"x": 2})
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True)
    try:
        storage.commit(paxos.Persist(log=[paxos.LogEntry(0, "a", a.encode(), 0)]))
        assert heavy.merge_slots(str(db), [(0, 0)], 0)["total"] == 2
        assert "not in the database" in heavy.merge_slots(str(db), [(1, 1)], 0)["error"]
        with monkeypatch.context() as m:
            m.setattr(catalog, "summarize", lambda *_: 1 / 0)
            with pytest.raises(ZeroDivisionError):
                heavy.stored_summary(str(db), 0, 0)
        storage.commit(paxos.Persist(log=[paxos.LogEntry(1, "b", a.encode(), 1)]))
        assert heavy.merge_slots(str(db), [(0, 0), (1, 1)], 0)["total"] == 4
        assert heavy.stored_summary(str(db), 1, 1)["words"] == 2
    finally:
        storage.close()


def test_a_snapshot_does_not_see_what_is_committed_while_it_reads(tmp_path: Path) -> None:
    """A manifest's value is read in several passes over its chunks (heavy._Parts): a reclaim
    entry committed between two must not change what they read."""
    a = _obj("a", {b"x": 2})
    db = tmp_path / "prm.db"
    storage = Storage.open(db, bootstrap=True)
    try:
        storage.commit(paxos.Persist(log=[paxos.LogEntry(0, "a", a.encode(), 0)]))
        with heavy._snapshot(str(db)) as conn:
            count = "SELECT count(*) FROM log"
            before = conn.execute(count).fetchall()
            storage.commit(paxos.Persist(log=[paxos.LogEntry(1, "b", a.encode(), 1)]))
            assert conn.execute(count).fetchall() == before
    finally:
        storage.close()
