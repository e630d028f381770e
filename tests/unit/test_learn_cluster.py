"""Which cluster a node without an id joins (prm.learned, which learn_cluster asks about): the
id more than half of that cluster's other voters answer with, counted from the voters the
answers name, not from the configured nodes."""

from __future__ import annotations

from paxmr.services.prm import learned
from paxmr.services.transport import Hello

FOUNDERS = (1, 2, 3)


def _c(length: int = 5, voters: tuple[int, ...] | None = FOUNDERS) -> Hello:
    return Hello("c", length=length, voters=voters, founders=FOUNDERS)


def test_a_node_that_lost_its_disk_learns_the_id_and_the_founders() -> None:
    assert learned(3, [1, 2, 3], {1: _c(), 2: _c()}) == ("c", FOUNDERS)


def test_nodes_configured_but_not_members_do_not_count() -> None:
    """The inventory grew from 3 to 7: nodes 5-7 are configured and answer nobody yet."""
    configured = [1, 2, 3, 4, 5, 6, 7]
    assert learned(4, configured, {1: _c(), 2: _c(), 3: _c()}) == ("c", FOUNDERS)
    assert learned(4, configured, {1: _c(), 2: _c()}) == ("c", FOUNDERS)
    assert learned(4, configured, {1: _c()}) is None  # one of three voters: not a majority


def test_a_node_refounded_by_mistake_is_not_followed() -> None:
    mistake = Hello("d", length=0, voters=FOUNDERS, founders=FOUNDERS)
    assert learned(3, [1, 2, 3], {1: mistake, 2: _c()}) is None
    assert learned(4, [1, 2, 3, 4], {1: mistake, 2: _c(), 3: _c()}) == ("c", FOUNDERS)


def test_the_voters_come_from_the_longest_log() -> None:
    """Node 1 has not applied the removal of 4 and 5 yet; node 2 has: 1 and 2 are the
    majority of the others among {1, 2, 3}."""
    old = _c(length=3, voters=(1, 2, 3, 4, 5))
    assert learned(3, [1, 2, 3, 4, 5], {1: old, 2: _c(length=9)}) == ("c", FOUNDERS)
    assert learned(3, [1, 2, 3, 4, 5], {1: _c(length=9, voters=(1, 2, 3, 4, 5)), 2: old}) is None


def test_peers_that_name_no_voters_are_counted_against_the_configured_nodes() -> None:
    old = Hello("c", length=5)  # a paxmr before voters in the answer
    assert learned(3, [1, 2, 3], {1: old, 2: old}) == ("c", ())
    assert learned(5, [1, 2, 3, 4, 5], {1: old, 2: old}) is None


def test_no_answer_or_no_id_learns_nothing() -> None:
    assert learned(3, [1, 2, 3], {}) is None
    assert learned(3, [1, 2, 3], {1: Hello(""), 2: Hello("")}) is None


def test_voters_this_node_cannot_ask_do_not_count() -> None:
    """Nodes 4 and 5 were added with addresses in the log; node 1's configuration lists 1-3
    (it only says where nodes are), and node 1 lost its disk: it can ask 2 and 3 only, and
    both answer (a review found this node waiting for good)."""
    grown = Hello("c", length=9, voters=(1, 2, 3, 4, 5), founders=FOUNDERS)
    assert learned(1, [1, 2, 3], {2: grown, 3: grown}) == ("c", FOUNDERS)
    assert learned(1, [1, 2, 3], {2: grown}) is None
