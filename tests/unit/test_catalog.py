"""Applying chosen entries: a forged value is listed with its error, and nothing raises."""

from __future__ import annotations

import msgpack

from paxmr.catalog import Catalog
from paxmr.logobject import LogObject
from paxmr.paxos import GENESIS_DIGEST, LogEntry, chain_digest

# The value that crash-looped every PRM: decoded once, then the digest step raised TypeError.
FORGED = msgpack.packb(
    {"v": 1, "file": "x", "node": 2, "rid": "f", "words": [1], "counts": [1], "digest": "d"}
)


def _real(rid: str) -> bytes:
    return LogObject.from_counts("f_reduced", 1, rid, [(b"apple", 3), (b"pear", 1)]).encode()


def test_a_forged_value_keeps_its_position_with_an_error_and_the_log_goes_on() -> None:
    catalog = Catalog()
    entries = [
        LogEntry(0, "a", _real("a"), 0),
        LogEntry(1, "f", FORGED, 1),
        LogEntry(2, "", b"", None),  # a no-op
        LogEntry(3, "b", _real("b"), 2),
    ]
    for entry in entries:
        catalog.apply(entry)
    assert [s["position"] for s in catalog.summaries] == [0, 1, 2]
    assert [s["slot"] for s in catalog.summaries] == [0, 1, 3]
    assert catalog.summaries[0]["words"] == 4
    assert "error" in catalog.summaries[1]
    assert catalog.summaries[1]["file"] is None
    assert "error" not in catalog.summaries[2]
    digest = GENESIS_DIGEST
    for entry in entries:
        digest = chain_digest(digest, entry)
    assert catalog.digest == digest
