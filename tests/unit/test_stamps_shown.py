"""What a node refuses of a peer's storage it also shows that peer (paxmr/stamps.py): a peer
refused without being told never fences, and sits outside the cluster for good."""

from __future__ import annotations

import pytest

from paxmr.stamps import RETIRED_SHOWN, Sightings, Stamp, behind


def _replaced(times: int) -> Sightings:
    """Node 1's sightings of node 2, whose storage was replaced `times` times (nonces 0..)."""
    seen = Sightings()
    for nonce in range(times + 1):
        seen.saw(2, Stamp(nonce, 5))
    return seen


def test_a_storage_replaced_lately_is_refused_and_told() -> None:
    one = _replaced(RETIRED_SHOWN)
    oldest = Stamp(0, 9)  # a snapshot from before every replacement, reverted
    assert one.refusal(2, oldest) is not None
    assert behind(oldest, 1, one.seen.get(2), one.shown_retired(2)) is not None


@pytest.mark.xfail(
    strict=True,
    reason="a hello and the start-up answer show a peer only its newest RETIRED_SHOWN retired"
    " nonces, while refusal checks them all: a snapshot from before the 33rd-last replacement"
    " of a node's storage is refused by every peer and never told to fence",
)
def test_a_storage_replaced_long_ago_is_refused_only_where_it_is_told() -> None:
    one = _replaced(RETIRED_SHOWN + 1)
    oldest = Stamp(0, 9)
    told = behind(oldest, 1, one.seen.get(2), one.shown_retired(2)) is not None
    assert told == (one.refusal(2, oldest) is not None)
