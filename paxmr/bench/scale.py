"""The log at scale on a local 3-node cluster: memory, restart, catch-up and reads under load.

One cluster grows through the given sizes (entries of about ``tally_bytes`` each). At each size it
prints, for a follower: the RSS of its PRM process and of its worker processes, the log's value
bytes, and the time from SIGKILL to a restarted PRM that serves the whole log (``print`` answers
with every entry), with the CPU time the new PRM process used until then (``restarts`` times: the
median, and the range). The first size (0 by default) is the same-run baseline, and the growth per
MiB of log is against it. The issue's goal is memory flat in the log's size (values stay in SQLite:
paxmr/paxos/log.py) and a restart that does not decode the log (summaries are stored with it:
paxmr/catalog.py); the figures say how close the PRM is.

After the baseline, a third node is stopped (``stop``: it misses everything from then on), and
each phase prints its seconds, the elections during it, the load average at its start and end
and the PRMs' event-loop timers that ran over 0.2 s late, with what held each loop (``_late``):
the growth (replicate MB/s), one ``largest`` tally of short words (in chunks past the value
limit, with the peak memory of each node that applies it: its PRM's and its largest worker's),
then, with the log complete, 5 s of ``status`` and ``print`` on every node with nothing else
running (the baseline of the p99s below), the stopped node's catch-up (MB/s, against the durable
commit rate of the same bytes in the same run: ``commit_floor_mb_per_s``) with the same reads
polled meanwhile, and a merge storm (``merges`` clients spread over the nodes, each merging 8
positions spread over the log, one merge after another for 10 s) with the same reads.
Elections during the growth, the largest tally and the merge storm are the ones client load
caused (a restarted node is first left to find the leader: its campaign is not theirs).

Tallies have few, long words (cheap to parse) unless ``word_bytes`` is small: real tallies of
many short words cost much more CPU to decode at start-up than these.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from paxmr import control, local
from paxmr.bench.replicate import fsync_commits
from paxmr.bench.storm import Poller, call, elections, leader, write_tally
from paxmr.settings import Settings, load

_MIB = 1 << 20


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (``VmHWM``: its peak since start or `_reset_peak`)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _tally(path: Path, size: int, word_bytes: int, tag: int) -> None:
    width = max(word_bytes - 12, 1)
    words = sorted(
        b"t%03dw%07d" % (tag % 1000, i) + b"x" * width for i in range(size // (width + 14))
    )
    path.write_bytes(b"paxmr-tally 1\n" + b"".join(w + b"\t1\n" for w in words))


def _cpu_s(pid: int) -> float:
    """CPU seconds a process used so far (user and system): what its start-up cost, less at
    the mercy of the machine's load than the time it took."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _prm_pid(root: Path, node: int) -> int:
    return next(s.pid for s in local.load_state(root) if s.node == node and s.name == "prm")


def _replicate(settings: Settings, file: str) -> None:
    """One entry, retried with its request id while the outcome is unknown or the node busy."""
    rid = uuid.uuid4().hex
    for _ in range(50):
        try:
            control.call(settings.prm_socket, "replicate", {"file": file, "request_id": rid},
                         timeout=120.0)  # fmt: skip
        except control.RemoteError as exc:
            if exc.code not in control.RETRY_LATER:
                raise
            time.sleep(0.2)
        else:
            return
    raise RuntimeError(f"replicate {file} did not land")


def _answering(settings: Settings, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(control.ServiceDown, control.RemoteError, OSError):
            control.call(settings.prm_socket, "status", timeout=30.0)
            return
        time.sleep(0.02)
    raise RuntimeError(f"node {settings.node_id} did not start")


def _serving(settings: Settings, entries: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(control.ServiceDown, control.RemoteError, OSError):
            log = control.call(settings.prm_socket, "print", timeout=30.0)
            if len(log["entries"]) >= entries:
                return
        time.sleep(0.02)
    raise RuntimeError(f"node {settings.node_id} did not serve {entries} entries")


def _follower(nodes: list[Settings], lagger: Settings) -> Settings:
    """A follower that is not the node kept behind for the catch-up."""
    lead = leader(nodes)
    return next(s for s in nodes if s.node_id not in {lead.node_id, lagger.node_id})


def _settled(settings: Settings, timeout: float = 60.0) -> None:
    """Wait until a restarted node follows a leader: before it has heard one, it may campaign,
    an election of the restart's that the next phase must not count as its own."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(control.ServiceDown, control.RemoteError, OSError):
            if control.call(settings.prm_socket, "status", timeout=30.0)["leader"] is not None:
                return
        time.sleep(0.05)
    raise RuntimeError(f"node {settings.node_id} follows no leader")


def _measure(root: Path, follower: Settings, entries: int, restarts: int) -> dict[str, Any]:
    _serving(follower, entries)
    time.sleep(1.0)  # let the workers finish and the heap settle
    pid = _prm_pid(root, follower.node_id)
    status = control.call(follower.prm_socket, "status", timeout=30.0)
    prm_rss = _rss_kib(pid)
    workers_rss = sum(_rss_kib(c) for c in _children(pid))
    # Restart to serving, `restarts` times: on a loaded machine one restart's time is mostly
    # how long the new process waited for a core, so the median and range say more.
    times = [_restart(root, follower, entries) for _ in range(restarts)]
    ready, serving, cpu = ([statistics.median(t), min(t), max(t)] for t in zip(*times, strict=True))
    return {
        "entries": entries,
        "log_mib": round(status["log"]["bytes"] / _MIB, 1),
        "prm_rss_mib": round(prm_rss / 1024, 1),
        "workers_rss_mib": round(workers_rss / 1024, 1),
        "restart_ready_s": round(ready[0], 2),
        "restart_serving_s": round(serving[0], 2),
        "restart_cpu_s": round(cpu[0], 2),
        "restarts": restarts,
        "restart_serving_range_s": [round(serving[1], 2), round(serving[2], 2)],
        "restart_cpu_range_s": [round(cpu[1], 2), round(cpu[2], 2)],
    }


def _restart(root: Path, follower: Settings, entries: int) -> tuple[float, float, float]:
    """SIGKILL the follower's PRM, start it again: seconds until it answered and until it
    served the whole log, and the CPU seconds the new process used until then."""
    pid = _prm_pid(root, follower.node_id)
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    with contextlib.suppress(control.ServiceDown, TimeoutError):  # slower than local's wait
        local.restart(root, follower.node_id, "prm")
    _answering(follower)
    ready = time.perf_counter() - killed
    _serving(follower, entries)
    serving = time.perf_counter() - killed
    cpu = _cpu_s(_prm_pid(root, follower.node_id))
    _settled(follower)
    return ready, serving, cpu


def _load() -> float:
    return round(os.getloadavg()[0], 1)


class _Phase:
    """A phase of the run: its seconds, the elections during it (candidate turns summed over
    the nodes: storm.elections), the load average at its start and end, and the PRMs' event
    loop timers that ran late (``_late``)."""

    def __init__(self, root: Path, nodes: list[Settings]) -> None:
        self.nodes = nodes
        self.logs = [local.log_path(root, s.node_id, "prm") for s in nodes]
        self.figures: dict[str, Any] = {}

    def __enter__(self) -> dict[str, Any]:
        self._elections = elections(self.nodes)
        self._load = _load()
        self._sizes = [p.stat().st_size for p in self.logs]
        self._started = time.perf_counter()
        return self.figures

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.figures["seconds"] = round(time.perf_counter() - self._started, 2)
            self.figures["elections"] = elections(self.nodes) - self._elections
            self.figures["load_average"] = [self._load, _load()]
            self.figures["loop_late"] = _late(self.logs, self._sizes)


def _late(logs: list[Path], sizes: list[int]) -> dict[str, Any]:
    """The PRMs' ``loop_late`` lines (observe.Observer.watch_loop) logged after ``sizes``: how
    many, the latest, and what held each loop: its own work (the loop's thread used the CPU
    for at least half the delay), the PRM's other threads (its process did, the loop's thread
    not), or the machine (neither: no core was free for it)."""
    found: list[dict[str, Any]] = []
    for path, size in zip(logs, sizes, strict=True):
        with path.open("rb") as f:
            f.seek(size)
            for line in f:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == "loop_late":
                        found.append(event)
    held = Counter(
        "loop" if e["loop_cpu"] >= e["seconds"] / 2
        else "threads" if e["process_cpu"] - e["loop_cpu"] >= e["seconds"] / 2
        else "machine"
        for e in found
    )  # fmt: skip
    worst = max((e["seconds"] for e in found), default=0.0)
    return {"timers": len(found), "worst_s": worst, **held}


def _p99s(poller: Poller) -> dict[str, Any]:
    return {"status_p99_ms": poller.p99_ms("status"), "print_p99_ms": poller.p99_ms("print"),
            "read_failures": poller.failures}  # fmt: skip


def _grow(
    root: Path, nodes: list[Settings], names: list[str], have: int, size: int
) -> dict[str, Any]:
    """Replicate entries ``have`` to ``size`` at the leader from ``len(names)`` clients."""
    lead = leader(nodes)
    jobs = [(lead, names[i % len(names)]) for i in range(have, size)]
    with _Phase(root, nodes) as phase, ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda job: _replicate(*job), jobs))
    return phase


def _largest(root: Path, nodes: list[Settings], size: int, lagger: Settings) -> dict[str, Any]:
    """One tally of about ``size`` bytes of short words, replicated at the leader (in chunks
    past the value limit), and the peak memory of each node that applies it meanwhile (not
    ``lagger``, stopped: it gets the tally in the catch-up)."""
    lead = leader(nodes)
    tally_bytes = write_tally(lead.data_dir / "largest_reduced", size)
    prms = {s.node_id: _prm_pid(root, s.node_id) for s in nodes if s is not lagger}
    for pid in prms.values():
        for each in [pid, *_children(pid)]:
            _reset_peak(each)
    with _Phase(root, nodes) as phase:
        _replicate(lead, "largest_reduced")
    phase["tally_bytes"] = tally_bytes
    phase["mb_per_s"] = round(tally_bytes / 1e6 / phase["seconds"], 2)
    # The leader answers once it applied the tally; a follower may still be checking it.
    shown = len(control.call(lead.prm_socket, "print", timeout=60.0)["entries"])
    for settings in nodes:
        if settings is not lagger:
            _serving(settings, shown)
    # Each node's peak memory: its PRM's, and its largest worker's (which parse and check the
    # tally), in MiB; the leader (L) first.
    phase["peak_mib"] = {
        f"{node}{'L' if node == lead.node_id else ''}": [
            round(_rss_kib(pid, "VmHWM") / 1024, 1),
            round(max((_rss_kib(c, "VmHWM") for c in _children(pid)), default=0) / 1024, 1),
        ]
        for node, pid in sorted(prms.items(), key=lambda kv: kv[0] != lead.node_id)
    }
    return phase


def _catch_up(root: Path, nodes: list[Settings], lagger: Settings) -> dict[str, Any]:
    """Resume the node that missed everything; until it shows the leader's whole log."""
    target = control.call(leader(nodes).prm_socket, "status", timeout=30.0)
    entries = len(control.call(leader(nodes).prm_socket, "print", timeout=60.0)["entries"])
    with _Phase(root, nodes) as phase, Poller(nodes, ("status", "print")) as poller:
        control.call(lagger.prm_socket, "resume", timeout=30.0)
        while control.call(lagger.prm_socket, "status", timeout=30.0)["digest"] != target["digest"]:
            time.sleep(0.02)
        _serving(lagger, entries)
    phase.update(_p99s(poller))
    phase["log_mib"] = round(target["log"]["bytes"] / _MIB, 1)
    phase["mb_per_s"] = round(target["log"]["bytes"] / 1e6 / phase["seconds"], 2)
    return phase


def _merge_storm(
    root: Path, nodes: list[Settings], *, merges: int, positions: int, entries: int, seconds: float
) -> dict[str, Any]:
    """``merges`` clients, spread over the nodes, each merging ``positions`` positions spread
    over the log, one merge after another for ``seconds``."""
    step = max(1, entries // positions)
    listed = list(range(0, entries, step))[:positions]

    def client(i: int) -> list[str]:
        codes = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            codes.append(call(nodes[i % 3], "merge", {"positions": listed, "top": 10})[0])
        return codes

    with _Phase(root, nodes) as phase, Poller(nodes, ("status", "print")) as poller, \
            ThreadPoolExecutor(merges) as pool:  # fmt: skip
        replies = [code for codes in pool.map(client, range(merges)) for code in codes]
    phase.update(_p99s(poller))
    phase["replies"] = dict(Counter(replies))
    return phase


def _quiet(root: Path, nodes: list[Settings], seconds: float) -> dict[str, Any]:
    """The same reads with nothing else running: the baseline of the p99s under load."""
    with _Phase(root, nodes) as phase, Poller(nodes, ("status", "print")) as poller:
        time.sleep(seconds)
    phase.update(_p99s(poller))
    return phase


def run(
    sizes: list[int],
    tally_bytes: int,
    word_bytes: int,
    clients: int,
    *,
    largest: int,
    merges: int,
    restarts: int = 1,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"tally_bytes": tally_bytes, "word_bytes": word_bytes}
    with tempfile.TemporaryDirectory(prefix="paxmr-bench-scale-") as tmp:
        root = Path(tmp)
        local.up(root, nodes=3, mappers=1)
        try:
            nodes = [load(local.config_path(root, n)) for n in (1, 2, 3)]
            lead = leader(nodes)
            names = [f"scale{i}_reduced" for i in range(clients)]
            for i, name in enumerate(names):  # on every node: any of them may lead
                _tally(nodes[0].data_dir / name, tally_bytes, word_bytes, i)
                for s in nodes[1:]:
                    (s.data_dir / name).write_bytes((nodes[0].data_dir / name).read_bytes())
            # The node that misses everything after the baseline, and catches it up at the end.
            lagger = next(s for s in nodes if s.node_id != lead.node_id)
            base, *more = sorted(sizes)
            _grow(root, nodes, names, 0, base)
            rows.append(_measure(root, _follower(nodes, lagger), base, restarts))
            control.call(lagger.prm_socket, "stop", timeout=30.0)
            out["grow"] = []
            have = base
            for size in more:
                out["grow"].append(_grow(root, nodes, names, have, size))
                out["grow"][-1]["mb_per_s"] = round(
                    (size - have) * tally_bytes / 1e6 / out["grow"][-1]["seconds"], 2
                )
                have = size
                rows.append(_measure(root, _follower(nodes, lagger), have, restarts))
            if largest:
                out["largest"] = _largest(root, nodes, largest, lagger)
            # The floor of a catch-up's writes: durable commits of one tally's bytes each.
            floor = fsync_commits(root, b"x" * tally_bytes, 20)
            out["commit_floor_mb_per_s"] = round(len(floor) * tally_bytes / 1e6 / sum(floor), 2)
            out["quiet"] = _quiet(root, nodes, 5.0)
            out["catch_up"] = _catch_up(root, nodes, lagger)
            out["merge_storm"] = _merge_storm(
                root, nodes, merges=merges, positions=8, entries=have, seconds=10.0
            )
        finally:
            local.down(root)
    for row in rows:
        grown = row["log_mib"] - rows[0]["log_mib"]
        row["prm_mib_per_log_mib"] = (
            round((row["prm_rss_mib"] - rows[0]["prm_rss_mib"]) / grown, 2) if grown > 0 else None
        )
    out["rows"] = rows
    out["baseline"] = rows[0]
    return out


def _spread(row: dict[str, Any], what: str) -> str:
    """A row's median restart figure, with its range when it restarted more than once."""
    median = row[f"restart_{what}_s"]
    low, high = row[f"restart_{what}_range_s"]
    return f"{median}" if row["restarts"] == 1 else f"{median} ({low}-{high})"


def render(result: dict[str, Any]) -> str:
    """The rows as a table, then each phase's figures, one per line."""
    from paxmr import render as text  # noqa: PLC0415 - the CLI's tables

    table = text.table(
        ["entries", "log MiB", "PRM RSS MiB", "workers RSS MiB", "ready s", "serving s",
         "start CPU s", "PRM MiB per log MiB"],
        [[x["entries"], x["log_mib"], x["prm_rss_mib"], x["workers_rss_mib"],
          x["restart_ready_s"], _spread(x, "serving"), _spread(x, "cpu"),
          x["prm_mib_per_log_mib"]]
         for x in result["rows"]],
    )  # fmt: skip
    phases = ("grow", "largest", "commit_floor_mb_per_s", "quiet", "catch_up", "merge_storm")
    return "\n".join([table, *(f"{k:>22}: {result[k]}" for k in phases if k in result)])
