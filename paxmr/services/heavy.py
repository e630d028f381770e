"""Heavy work of the PRM in worker processes, so it never holds the GIL the driver needs.

Decoding a tally, parsing one for replicate and merging many of them is pure-Python work of tens
of milliseconds per MB. Run in the PRM's own threads it still holds the GIL the event loop needs
for heartbeats, commits and elections (measured: `paxmr bench storm`). It runs here instead, in
processes of their own, behind an admission limit: a request over the limit is refused at once
with ``busy`` instead of waiting in an unbounded queue.

Two pools, so that client work never delays what consensus needs:

- ``Pool("client")``: merge and the encoding of a tally for replicate (admission-limited);
- ``Pool("apply")``: summaries of applied entries and the validation of forwarded values.

The functions that run in a worker take and return plain data (bytes, ints, dicts) and read the
log's values from SQLite themselves (``merge_slots``), so a merge of many large entries never
copies them through the PRM.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import sqlite3
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from paxmr import chunks, logobject, logs, paths, tallyvalue
from paxmr.logobject import BadLogObject, show
from paxmr.wordcount import tally

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

T = TypeVar("T")

_QUIET_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"


class Busy(Exception):
    """Over the pool's admission limit: nothing was started."""


class Pool:
    """A process pool that admits at most ``limit`` calls at a time (running or queued).

    Its processes start on first use (a replica that only ever sees small values has none),
    or when ``start`` is called."""

    def __init__(self, name: str, workers: int, limit: int | None = None) -> None:
        self.name = name
        self.workers = workers
        self.limit = limit
        self.active = 0
        self.threads = False  # True once worker processes turned out unavailable
        self._pool: Executor | None = None  # made on first use

    @property
    def _executor(self) -> Executor:
        if self._pool is None:
            self._pool = self._new()
        return self._pool

    @_executor.setter
    def _executor(self, executor: Executor) -> None:
        self._pool = executor

    def _new(self) -> Executor:
        if self.threads:
            return ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
        # multiprocessing's resource tracker (a process of its own, started with the first
        # pool) warns on stderr about the semaphores of a PRM that was SIGKILLed, and cleans
        # them up anyway: its warning would be the one line of the log that is not JSON.
        if _QUIET_TRACKER not in sys.warnoptions:
            sys.warnoptions.append(_QUIET_TRACKER)
        try:
            # spawn, not fork: the PRM has threads (a forked child could inherit a held lock).
            return ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_started,
                initargs=(os.getpid(), self.name),
            )
        except OSError as exc:  # no POSIX semaphores here (a sandbox without /dev/shm)
            return self._in_threads(exc)

    def _in_threads(self, exc: OSError) -> Executor:
        """Worker processes are not available: run the work in threads, off the event loop
        but sharing its GIL, and say so once."""
        logs.get().warning("worker_processes_unavailable", pool=self.name, error=repr(exc))
        self.threads = True
        return ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)

    def start(self) -> None:
        """Start a worker now, not with the first call: the executor starts one per call
        submitted, up to ``workers``, and this call does nothing. (Starting one failed: the
        first real call finds out, as without this.)"""
        with contextlib.suppress(OSError):
            self._executor.submit(int)

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one of the ``limit`` places (raises Busy when none is free)."""
        if self.limit is not None and self.active >= self.limit:
            raise Busy(f"{self.active} {self.name} requests are running (limit {self.limit})")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    async def run_admitted(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a worker, for a caller that holds a place (``admitted``)."""
        executor = self._executor
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except OSError as exc:  # starting a worker process failed (not the work: it returns data)
            if self.threads or self._executor is not executor:
                raise
            self._executor = self._in_threads(exc)
            executor.shutdown(wait=False, cancel_futures=True)
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except BrokenProcessPool:
            if self._executor is executor:  # a worker died: the next call gets a fresh pool
                self._executor = self._new()
                executor.shutdown(wait=False, cancel_futures=True)
            raise

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a worker, or raise Busy over the admission limit."""
        with self.admitted():
            return await self.run_admitted(fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def comm(pool: str) -> str:
    """The process name of the pool's workers."""
    return pool.replace(" ", "-")[:15]


def children(pid: int | None = None) -> list[int]:
    """The processes ``pid`` (this one by default) started: a PRM's workers and
    multiprocessing's resource tracker."""
    me = str(os.getpid() if pid is None else pid)
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                found.append(int(stat.parent.name))
    return found


# --- what runs in a worker: plain data in, plain data out -------------------------------------


def _worker_started(parent: int, pool: str) -> None:
    """Workers yield the CPU to the PRM's own process: on a loaded host the loop that sends
    heartbeats must not wait for a core behind a merge. (A seccomp filter without setpriority,
    as in the systemd unit's @resources exclusion, refuses it: the worker runs unchanged.)

    A worker is named for its pool (``comm``: what ps and top show, at most 15 bytes), so that
    an operator, and ``paxmr bench large``, can tell whose memory is whose.

    And a worker ends when the PRM does, however it ends: a SIGKILLed PRM cannot tell it to
    (its workers hold the call queue's write end too, so they would wait on it for ever)."""
    with contextlib.suppress(OSError):
        os.nice(10)
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(comm(pool))

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=orphaned, name="orphaned", daemon=True).start()


def summary(value: bytes, position: int) -> dict[str, Any]:
    """The catalog's summary of an applied value (catalog.summarize)."""
    from paxmr.catalog import summarize  # noqa: PLC0415 - light in the PRM, needed in workers

    return summarize(value, position)


def validate(value: bytes) -> str | None:
    """Why ``value`` is not a log object (or the manifest of a chunked one), or None."""
    if chunks.manifest(value) is not None:
        return None  # its chunks are checked where it is applied (catalog.summarize)
    try:
        logobject.read(logobject.pieces_of(value), len(value)).summary(0)
    except BadLogObject as exc:
        return str(exc)
    return None


def encode_tally(
    data_dir: str, name: str, inode: tuple[int, int, int], spool: str, *, node: int, rid: str
) -> tallyvalue.Encoded:
    """Encode the tally file ``name`` as its log object's value into the file ``spool`` (made
    by the PRM, which reads the value's parts from it and removes it: replicate), in bounded
    memory (tallyvalue.py). The file is opened again as the PRM opened it (paths.open_input:
    race-free, inside the data directory) and must be the one the PRM checked: ``inode`` is
    its (device, inode, size) there. Raises tally.TallyError."""
    with paths.open_input(Path(data_dir), name) as source:
        st = os.fstat(source.fileno())
        if (st.st_dev, st.st_ino, st.st_size) != inode:
            raise tally.TallyError(f"{name}: replaced while it was read; nothing was replicated")
        # Not created here: the PRM made it, and a worker that outlived its request must not
        # make it again once the PRM removed it (Prm._log_object).
        fd = os.open(spool, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as out:
            # Its counts wait beside it, in an unnamed file, past a block's size.
            spill = str(Path(spool).parent)
            return tallyvalue.encode(
                source, name, node, rid, out.write, size=st.st_size, spill=spill
            )


# Each thread's own (a pool without processes runs the work in threads, and a PRM reads in its
# own at start-up): sqlite3 refuses a connection made in another thread, and a read transaction
# (_snapshot) is its connection's.
_local = threading.local()


def _reader(db: str) -> sqlite3.Connection:
    connections: dict[str, sqlite3.Connection] = _local.__dict__.setdefault("connections", {})
    conn = connections.get(db)
    if conn is None:
        conn = connections[db] = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    return conn


class _Parts:
    """A manifest's chunks as the log holds them before its slot (chunks.Parts: the first copy
    of each, None for one not there, empty if a reclaim entry emptied it), each read when
    asked for, so that a reader holds one at a time. Read inside one transaction
    (`_snapshot`): a reclaim entry applied meanwhile must not change them between two passes
    over the value."""

    def __init__(self, conn: sqlite3.Connection, manifest: chunks.Manifest, before: int) -> None:
        self._conn = conn
        self._slots: list[int | None] = []
        for rid in manifest.chunk_ids():
            rows = conn.execute(
                "SELECT slot FROM log WHERE request_id = ? AND slot < ? ORDER BY slot LIMIT 1",
                (rid, before),
            ).fetchall()
            self._slots.append(rows[0][0] if rows else None)

    def __getitem__(self, index: int) -> bytes | None:
        slot = self._slots[index]
        if slot is None:
            return None
        rows = self._conn.execute("SELECT value FROM log WHERE slot = ?", (slot,)).fetchall()
        return bytes(rows[0][0]) if rows else None  # empty if reclaimed: chunks.Parts says


@contextlib.contextmanager
def _snapshot(db: str) -> Iterator[sqlite3.Connection]:
    """The reader of ``db`` in one read transaction: every query sees the same log."""
    conn = _reader(db)
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.rollback()


def stored_summary(db: str, slot: int, position: int) -> dict[str, Any]:
    """The catalog's summary of the value stored at ``slot``, a chunked one read a chunk at a
    time."""
    from paxmr.catalog import summarize  # noqa: PLC0415 - light in the PRM, needed in workers

    with _snapshot(db) as conn:
        rows = conn.execute("SELECT value FROM log WHERE slot = ?", (slot,)).fetchall()
        if not rows:
            return {"position": position, "file": None, "words": 0, "error": "not in the database"}
        return summarize(bytes(rows[0][0]), position, lambda m: _Parts(conn, m, slot))


def chunks_intact(db: str, slot: int) -> bool:
    """Whether the chunks the log holds before the manifest at ``slot`` are the value it names
    (Manifest.pieces hashes them, a chunk at a time)."""
    with _snapshot(db) as conn:
        rows = conn.execute("SELECT value FROM log WHERE slot = ?", (slot,)).fetchall()
        manifest = chunks.manifest(bytes(rows[0][0])) if rows else None
        if manifest is None:
            return False
        try:
            manifest.pieces(_Parts(conn, manifest, slot))
        except BadLogObject:  # BadManifest
            return False
        return True


def chunk_sizes(db: str, ids: list[str]) -> list[int | None]:
    """The size of the first copy of each chunk id in the log (None: not there; 0: emptied by
    a reclaim entry). length() reads a row's header, not its value."""
    with _snapshot(db) as conn:
        sizes: list[int | None] = []
        for cid in ids:
            rows = conn.execute(
                "SELECT length(value) FROM log WHERE request_id = ? ORDER BY slot LIMIT 1", (cid,)
            ).fetchall()
            sizes.append(rows[0][0] if rows else None)
        return sizes


def merge_slots(db: str, slots: list[tuple[int, int]], top: int) -> dict[str, Any]:
    """Merge the log objects at ``slots`` ((position, slot) pairs, each read once, a batch of
    words at a time) straight from the database: the distinct words, the total and the ``top``
    words (all for 0). A position whose value is not a log object gives {"error": ...}."""
    merged: Counter[bytes] = Counter()
    times = Counter(slot for _, slot in slots)
    where = {slot: position for position, slot in slots}
    # A snapshot per position, not one for the whole merge: while a read transaction is open,
    # the database's write-ahead log cannot start again from its beginning, and grows with
    # every commit meanwhile (40 MiB of commits during one snapshot: a 41 MiB WAL, kept after).
    for slot, n in times.items():
        with _snapshot(db) as conn:
            rows = conn.execute("SELECT value FROM log WHERE slot = ?", (slot,)).fetchall()
            if not rows:
                return {"error": f"log position {where[slot]}: not in the database"}
            value = bytes(rows[0][0])
            try:
                parts = functools.partial(_Parts, conn, before=slot)
                pieces, size = chunks.object_pieces(value, parts)
                del value  # a manifest's object is read from its chunks, a part at a time
                for batch in logobject.read(pieces, size).batches():
                    for word, count in zip(*batch, strict=True):
                        merged[word] += count * n
            except BadLogObject as exc:  # the counts merged so far are dropped with `merged`
                return {"error": f"log position {where[slot]}: {exc}"}
    words = [[show(w), c] for w, c in merged.most_common(top or None)]
    return {"distinct": len(merged), "total": sum(merged.values()), "words": words}
