"""What a node refuses of a peer's storage it also shows that peer (paxmr/stamps.py): a peer
refused without being told never fences, and sits outside the cluster for good."""

from __future__ import annotations

from paxmr.stamps import Sightings, Stamp, behind


def _replaced(times: int) -> Sightings:
    """Node 1's sightings of node 2, whose storage was replaced `times` times (nonces 0..)."""
    seen = Sightings()
    for nonce in range(times + 1):
        seen.saw(2, Stamp(nonce, 5))
    return seen


def test_a_storage_replaced_lately_is_refused_and_told() -> None:
    one = _replaced(3)
    oldest = Stamp(0, 9)  # a snapshot from before every replacement, reverted
    assert one.refusal(2, oldest) is not None
    assert behind(oldest, 1, one.seen.get(2), one.retired_of(2)) is not None


def test_a_storage_replaced_long_ago_is_refused_only_where_it_is_told() -> None:
    """Review: with only the newest 32 shown, a snapshot from before the 33rd-last
    replacement was refused by every peer and never told to fence."""
    one = _replaced(40)
    oldest = Stamp(0, 9)
    told = behind(oldest, 1, one.seen.get(2), one.retired_of(2)) is not None
    assert told == (one.refusal(2, oldest) is not None)
