"""Large log objects: the value limit, and catch-up of entries that together outgrow a peer frame."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.local import Cluster, Node, running_cluster

pytestmark = pytest.mark.integration

# Tallies with few, long words: megabytes of value without megabytes of parsing.
WORD = 1000


def _tally(node: Node, name: str, size: int) -> str:
    words = sorted(b"w%07d" % i + b"x" * WORD for i in range(size // (WORD + 11)))
    (node.data / name).write_bytes(b"paxmr-tally 1\n" + b"".join(w + b"\t1\n" for w in words))
    return name


def _catches_up(cluster: Cluster, size: int, entries: int, timeout: float = 60) -> None:
    """A follower misses ``entries`` entries of ``size`` bytes, resumes and catches up."""
    leader = cluster.node(cluster.leader())
    lagger = cluster.node(leader.id % 3 + 1)
    for n in cluster.nodes:
        _tally(n, "big_reduced", size)
    assert lagger.cli("stop").returncode == 0
    try:
        for _ in range(entries):
            leader.replicate("big_reduced")
        target = cluster.converged(nodes=[n for n in cluster.nodes if n.id != lagger.id])
    finally:
        assert lagger.cli("resume").returncode == 0
    assert cluster.converged(timeout=timeout) == target


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as c:
        yield c


def test_value_over_the_limit_is_refused_with_a_clear_error(cluster: Cluster) -> None:
    node = cluster.node(2)
    limit = node.settings.limits.value_bytes
    before = cluster.converged()
    _tally(node, "huge_reduced", limit + (1 << 20))
    done = node.cli("replicate", "huge_reduced")
    assert done.returncode == 1, done
    assert "exceeds" in done.stderr
    assert str(limit) in done.stderr
    assert "Traceback" not in done.stderr
    assert cluster.converged() == before


def test_follower_catches_up_entries_that_together_outgrow_a_frame(cluster: Cluster) -> None:
    """Six 6 MB entries: 36 MB of catch-up against a 32 MiB frame limit."""
    frame = cluster.node(1).settings.limits.frame_bytes
    _catches_up(cluster, 6 << 20, entries=frame // (6 << 20) + 1)
    entries = cluster.node(3).call("print")["entries"]
    assert len(entries) == frame // (6 << 20) + 1
    assert len({e["digest"] for e in entries}) == 1


SMALL_FRAMES = {
    # A consistent configuration: every value fits a frame with room to spare.
    "PAXMR_LIMITS__FRAME_BYTES": str(300_000),
    "PAXMR_LIMITS__VALUE_BYTES": str(256 << 10),
}


def test_follower_catches_up_with_a_small_frame_limit() -> None:
    with running_cluster(env=SMALL_FRAMES) as cluster:
        _catches_up(cluster, 230_000, entries=6, timeout=15)  # about 1 s when it works


def test_a_tally_far_over_the_limit_is_refused_before_it_is_read(cluster: Cluster) -> None:
    """A tally more than twice the value limit is refused from its size alone (issue 12: a
    200 MiB tally was parsed, 690 MiB of memory, before its refusal)."""
    node = cluster.node(3)
    limit = node.settings.limits.value_bytes
    path = node.data / "vast_reduced"
    with path.open("wb") as f:  # not even a valid tally past its header: it is never read
        f.write(b"paxmr-tally 1\n")
        f.truncate(2 * limit + 1)
    done = node.cli("replicate", "vast_reduced")
    assert done.returncode == 1, done
    assert "would exceed" in done.stderr
    assert "too_large" in done.stderr


def test_merge_counts_a_position_listed_twice_twice(cluster: Cluster) -> None:
    node = cluster.node(1)
    (node.data / "m_reduced").write_bytes(b"paxmr-tally 1\nalpha\t3\n")
    position = node.replicate("m_reduced")["position"]
    once = node.cli_json("merge", str(position))
    twice = node.cli_json("merge", str(position), str(position))
    assert twice["total"] == 2 * once["total"]
    total = node.cli_json("total", str(position), str(position))
    assert total["total"] == twice["total"]
