"""Replicate time of tallies larger than one log value, against the same bytes as one value.

Two local 3-node clusters in turn (loopback only): one with the default value limit (8 MiB), where
a larger tally spans several chunk entries and a manifest (paxmr/chunks.py), and the same-run
baseline, one whose value limit is raised so that the same tally goes as a single value. Each
tally is replicated ``rounds`` times on the leader (a new request id each time) and the median
time from the call to its acknowledgement is printed. Tallies have the shape of a real one (short
words, varied counts: a 38 MB source tree's tally is 8.9 MB of 574,558 words).

Beside each time, the peak memory (VmHWM) of the leader's PRM and of its worker processes by
pool (heavy.py names them: heavy-client encodes a tally for replicate, apply summarizes what is
applied). A process keeps its peak, so a row shows the largest of that cluster's sizes so far.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paxmr import control, local
from paxmr.bench.storm import leader, write_tally
from paxmr.services import heavy
from paxmr.settings import load

if TYPE_CHECKING:
    from collections.abc import Iterator

_MIB = 1 << 20
# A replicate not acknowledged by then (retries included) counts as this long: the figure
# says so, and the run goes on.
_GIVE_UP_S = 180.0


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Services started in this block see these settings (PAXMR_* variables)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _times(sizes: list[int], value_bytes: int, rounds: int) -> list[dict[str, Any]]:
    frame = value_bytes * 2 + _MIB
    settings = {
        "PAXMR_LIMITS__VALUE_BYTES": str(value_bytes),
        "PAXMR_LIMITS__FRAME_BYTES": str(frame),
        "PAXMR_LIMITS__IN_FLIGHT_BYTES": str(frame),
        "PAXMR_TIMING__REPLICATE_TIMEOUT": "30",
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="paxmr-bench-large-") as tmp:
        root = Path(tmp)
        with _environment(settings):
            local.up(root, nodes=3, mappers=1)
        try:
            nodes = [load(local.config_path(root, n)) for n in (1, 2, 3)]
            for size in sizes:
                lead = leader(nodes)
                name = f"large{size}_reduced"
                tally_bytes = write_tally(lead.data_dir / name, size)
                took, retries = [], 0
                for _ in range(rounds):
                    rid = uuid.uuid4().hex
                    started = time.perf_counter()
                    args = {"file": name, "request_id": rid}
                    while time.perf_counter() - started < _GIVE_UP_S:
                        try:
                            control.call(lead.prm_socket, "replicate", args, timeout=_GIVE_UP_S)
                            break
                        except (control.RemoteError, TimeoutError) as exc:
                            if getattr(exc, "request_id", rid) != rid:
                                raise
                            retries += 1  # unknown outcome: retried with its request id
                    took.append(time.perf_counter() - started)
                status = control.call(lead.prm_socket, "status", timeout=30.0)
                rows.append({"tally_bytes": tally_bytes, "value_bytes": value_bytes,
                             "median_s": round(statistics.median(took), 2),
                             "times_s": [round(t, 2) for t in took], "retries": retries,
                             "slots": status["slots"], **_peaks(root, lead.node_id)})  # fmt: skip
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # a later one may hang
        finally:
            local.down(root)
    return rows


def _peak_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0  # gone meanwhile


def _peaks(root: Path, node: int) -> dict[str, Any]:
    """The peak memory of ``node``'s PRM and the largest of each of its worker pools'."""
    prm = next(s.pid for s in local.load_state(root) if (s.node, s.name) == (node, "prm"))
    workers: dict[str, float] = {}
    for pid in heavy.children(prm):
        with contextlib.suppress(OSError):
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            workers[comm] = max(workers.get(comm, 0.0), _peak_mib(pid))
    pools = (heavy.comm("heavy client"), heavy.comm("apply"))
    return {"prm_peak_mib": _peak_mib(prm), **{f"{p}_peak_mib": workers.get(p) for p in pools}}


def run(sizes: list[int], rounds: int) -> dict[str, Any]:
    chunked = _times(sizes, 8 * _MIB, rounds)
    # The baseline's limit fits the largest tally's value whole (write_tally's files come out
    # up to a fifth larger than asked, and a value is about as large as its tally file).
    whole = _times(sizes, 2 * max(sizes), rounds)
    return {"chunked": chunked, "one_value": whole}
