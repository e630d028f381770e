"""The PRM's commit path on a real local cluster: what rides with a commit still lands when the
log falls idle (issue 14)."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from paxmr.services import prm
from tests.support.local import Cluster, Node, small_tally
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def _unsummarized(node: Node) -> list[int]:
    """The slots of the node's stored log positions that have no stored summary."""
    db = prm.db_path(node.settings)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT slot FROM log WHERE position IS NOT NULL"
            " AND slot NOT IN (SELECT slot FROM summary)"
        ).fetchall()
    finally:
        conn.close()
    return [slot for (slot,) in rows]


def test_summaries_of_a_burst_are_stored_everywhere_once_the_log_is_idle(
    cluster: Cluster,
) -> None:
    """Summaries ride with the next commit; the last ones of a burst, with no commit after
    them, are stored alone soon after. None is left for a restart to decode again."""
    node = cluster.nodes[0]
    name = small_tally(node)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: node.replicate(name), range(40)))
    wait_until(
        lambda: all(not _unsummarized(n) for n in cluster.nodes),
        lambda: f"positions without a stored summary: {[_unsummarized(n) for n in cluster.nodes]}",
        timeout=10.0,
    )
