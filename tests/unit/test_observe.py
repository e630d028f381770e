"""The PRM's metrics are the ones the README documents (issue 13: "Document the metric names")."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import time
from pathlib import Path

import structlog

from paxmr import logs, paxos
from paxmr.services.observe import LOOP_LATE, LOOP_TICK, Observer

README = Path(__file__).parents[2] / "README.md"


def test_every_metric_is_in_the_readme_table_and_every_row_is_a_metric(tmp_path: Path) -> None:
    observer = Observer(1, [2, 3], paxos.Membership(0, frozenset({1, 2, 3})), tmp_path / "db", 1.0)
    exposed = set()
    for family in observer.registry.collect():
        # The exposition's names: a counter's samples end in _total.
        exposed.add(family.name + ("_total" if family.type == "counter" else ""))
    text = README.read_text()
    section = text[text.index("| metric | type | meaning |") :]
    section = section[: section.index("\n\n")]
    documented = set(re.findall(r"`(paxmr_[a-z_]+)", section))
    assert exposed == documented


def test_a_loop_held_by_its_own_work_is_logged_late_with_its_cpu(tmp_path: Path) -> None:
    out = io.StringIO()
    logs.configure("prm", 1, stream=out, journald=False)
    try:
        observer = Observer(1, [2], paxos.Membership(0, frozenset({1, 2})), tmp_path / "db", 1.0)

        hold = LOOP_LATE + 2 * LOOP_TICK  # seconds of CPU on the loop's thread

        async def held() -> None:
            watch = asyncio.create_task(observer.watch_loop())
            await asyncio.sleep(0)  # the watch's timer is set
            busy = time.thread_time()
            while time.thread_time() - busy < hold:
                pass  # CPU on the loop's own thread: no timer can run meanwhile
            await asyncio.sleep(2 * LOOP_TICK)  # the late timer runs and is logged
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

        asyncio.run(held())
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    late = [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == "loop_late"]
    assert len(late) == 1, late
    # Lower bounds only (less 1 ms: the log rounds to it): on a loaded machine the loop may be
    # held longer, never shorter.
    assert late[0]["seconds"] >= hold - LOOP_TICK - 0.001
    assert late[0]["loop_cpu"] >= hold - 0.001
    # The process's clock is read just after the thread's, at the start too: its figure may be
    # a few microseconds less, which the rounding can make a millisecond.
    assert late[0]["process_cpu"] >= late[0]["loop_cpu"] - 0.001
    lag = observer.registry.get_sample_value("paxmr_loop_lag_seconds_bucket", {"le": "0.2"})
    count = observer.registry.get_sample_value("paxmr_loop_lag_seconds_count")
    assert count is not None
    assert lag is not None
    assert count - lag == 1  # one tick over 0.2 s


def test_each_replicate_is_counted_by_its_outcome_and_timed(tmp_path: Path) -> None:
    observer = Observer(1, [2, 3], paxos.Membership(0, frozenset({1, 2, 3})), tmp_path / "db", 1.0)
    for outcome, seconds in [("ok", 0.001), ("ok", 0.003), ("no_quorum", 7.0), ("ok", 0.0004)]:
        observer.replicated(outcome, seconds)
    text = observer.exposition()
    assert 'paxmr_replicate_requests_total{outcome="ok"} 3.0' in text
    assert 'paxmr_replicate_requests_total{outcome="no_quorum"} 1.0' in text
    assert "paxmr_replicate_duration_seconds_count 4.0" in text
    assert 'paxmr_replicate_duration_seconds_bucket{le="0.0005"} 1.0' in text
    assert 'paxmr_replicate_duration_seconds_bucket{le="5.0"} 3.0' in text
