"""paxmr bench tls compares what it says it compares (figures only, no timing asserted)."""

from __future__ import annotations

from paxmr.bench import tls


def test_the_same_framing_over_tls_13_and_plain_tcp() -> None:
    figures = tls.transport_figures(rounds=1, count=3)
    assert (figures["tls"], figures["plain"]) == ("TLSv1.3", "plain TCP")
    for key in ("rtt_small_tls_us", "rtt_small_plain_us", "rtt_tally_tls_us", "rtt_tally_plain_us",
                "connect_tls_ms", "connect_plain_ms"):  # fmt: skip
        assert figures[key] > 0, key
