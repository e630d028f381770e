"""Counterexamples from an adversarial review of the fixed core (after issue 8).

Driven by hand through the harness, as in test_paxos_regressions.py: every message stays on the
wire until the test delivers, holds back or drops it, and every Ready is committed before its
messages leave. Each test asserts only the property broken: safety (assert_safe) or that every
message fits a frame.
"""

from __future__ import annotations

from dataclasses import replace

import msgpack

from paxmr.paxos import to_wire
from paxmr.paxos.messages import Accept, CatchupReply, Forward, Prepare, Promise
from paxmr.settings import Limits
from tests.paxos.paxos_harness import CONFIG, Harness
from tests.paxos.test_paxos_regressions import ENVELOPE, assert_safe, link


def test_a_leader_that_starts_voting_mid_term_promised_its_own_ballot():  # noqa: C901 - one schedule
    """5 members. Node 1 lost its disk, fenced at r and leads there without voting (it has not
    caught up). Node 5 campaigns at p = r+1; nodes 2, 3, 4 promise p (their Promises are held).
    Node 1 is Nacked and campaigns again at r2 (a random round far above p). Before the fix, that
    campaign was no fence: node 1 won with 2, 3, 4 while node 5 heard nothing, caught up and
    voted with its promise still at r < p < r2; the held Prepare(p) then got its promise, and
    node 5 led at p with the held promises and overwrote node 1's r2 row in a chosen slot (two
    values for one slot). Now a node that has not caught up fences again (acceptor.py, step 2):
    the campaign at r2 needs node 5's answer too, which ends p, and node 1 promises r2 itself.
    The held Prepare(p) is refused, node 5 cannot lead at p, and the log stays one log."""
    h = Harness(5)
    h.fire(2)
    h.deliver()
    assert h.node(2).role == "leader"
    h.submit(2, "a", b"a")
    h.deliver()
    assert all(len(h.applied[i]) == 1 for i in h.members)
    h.wire.clear()

    def no_catchup_to_1(s: int, d: int, m: object) -> bool:
        return not (d == 1 and isinstance(m, CatchupReply) and m.from_slot == 0)

    def is_catchup_to_1(s: int, d: int, m: object) -> bool:
        return not no_catchup_to_1(s, d, m)

    # Node 1 loses its disk, probes, fences at r with every peer; its catch-up is lost.
    h.wipe(1)
    for _ in range(10):
        h.fire(1)
        h.deliver_where(no_catchup_to_1)
        h.take(is_catchup_to_1)
        if h.node(1).role == "leader":
            break
    n1 = h.node(1)
    assert n1.role == "leader"
    assert not n1.acceptor.voting
    assert n1.acceptor.recover_until == 1
    r = n1.ballot
    h.wire.clear()

    # Node 5 campaigns at p; 2, 3, 4 promise (held); the Prepare to node 1 is held.
    h.fire(5)
    p = h.node(5).ballot
    assert p > r
    held_prepare = h.take(link(5, 1, Prepare))
    h.deliver_where(lambda s, _d, m: s == 5 and isinstance(m, Prepare))
    held_promises = h.take(lambda _s, d, m: d == 5 and isinstance(m, Promise))
    assert len(held_promises) == 3
    h.wire.clear()

    # Node 1's heartbeat at r is Nacked; it steps down and campaigns again at r2, a fence
    # again: without node 5's answer it cannot win.
    def round_trip(with_5: bool) -> None:
        if not with_5:
            h.take(lambda s, d, _m: 5 in (s, d))
        h.deliver_where(lambda s, d, m: (with_5 or 5 not in (s, d)) and no_catchup_to_1(s, d, m))
        h.take(is_catchup_to_1)

    for _ in range(5):
        h.fire(1)
        round_trip(with_5=False)
        if h.node(1).role != "leader":
            break
    for _ in range(5):
        h.fire(1)
        round_trip(with_5=False)
    assert n1.role != "leader"
    for _ in range(20):
        h.fire(1)
        round_trip(with_5=True)
        if h.node(1).role == "leader":
            break
    r2 = n1.ballot
    assert n1.role == "leader"
    assert r2 > p
    assert n1.acceptor.promised == r2
    assert h.node(5).acceptor.promised == r2
    # Now it catches up and votes again, still leading at r2.
    for _ in range(5):
        h.fire(1)
        h.take(lambda s, d, _m: 5 in (s, d))
        h.deliver_where(lambda s, d, _m: 5 not in (s, d))
        if n1.acceptor.voting:
            break
    assert n1.acceptor.voting
    assert n1.role == "leader"
    assert n1.ballot == r2
    h.wire.clear()

    # x1 in slot 1 goes nowhere; y in slot 2 is accepted by 1, 2, 3 at r2: chosen.
    h.submit(1, "x1", b"x1")
    h.wire.clear()
    h.submit(1, "y", b"y")
    h.deliver_where(lambda s, d, m: s == 1 and d in {2, 3} and isinstance(m, Accept))
    h.take(lambda s, _d, _m: s == 1)
    h.deliver_where(lambda _s, d, _m: d == 1)
    assert {i for i in (2, 3) if 2 in h.disks[i].load().accepted} == {2, 3}
    h.wire.clear()

    # The held Prepare(p) reaches node 1, and the held promises node 5: p is over.
    h.put(held_prepare)
    h.deliver_where(link(5, 1, Prepare))
    assert n1.acceptor.promised == r2
    h.take(link(1, 5))
    h.put(held_promises)
    h.deliver_where(lambda _s, d, m: d == 5 and isinstance(m, Promise))
    assert h.node(5).ballot != p or h.node(5).role != "leader"
    h.wire.clear()

    # Node 4 leads with {1, 4, 5} and chooses what they report.
    h.fire(4)
    h.deliver_where(lambda s, d, _m: {s, d} <= {1, 4, 5})
    h.wire.clear()
    assert_safe(h)


def test_a_forwarded_request_id_never_makes_a_message_exceed_the_frame():
    """3 members, the core configured from Limits as the PRM does it. A peer (holding the
    cluster key, as in defect 4) forwards a request whose id is so long that the Forward just
    fits a frame; the value is small. The leader checks only the value's length and proposes
    it: every Accept (and later the old leader's Promise) carrying it is a few bytes over the
    frame limit and dropped by the transport, for good. Request ids are not bounded in the core
    (the control API bounds them at 128 characters, a peer's Forward is not)."""
    limits = Limits(value_bytes=1024, frame_bytes=40 * 1024)
    config = replace(
        CONFIG,
        max_value_bytes=limits.value_bytes,
        batch_bytes=limits.batch_bytes,
        max_in_flight=limits.in_flight,
    )
    h = Harness(3, config)
    h.frame_limit = limits.frame_bytes - ENVELOPE
    leader = h.elect()
    h.advance(0.2)
    h.deliver()
    base = len(msgpack.packb(to_wire(Forward("", b"v")), use_bin_type=True))
    forged = Forward("r" * (h.frame_limit - base - 8), b"v")
    assert len(msgpack.packb(to_wire(forged), use_bin_type=True)) <= h.frame_limit
    peer = next(i for i in h.members if i != leader)
    h.node(leader).receive(peer, forged, h.now)
    h.flush(leader)
    h.advance(1.0)
    h.submit(leader, "after", b"after")
    h.advance(1.0)
    oversized = sorted({(kind, size) for _, _, kind, size in h.oversized})
    assert not oversized, f"over the {h.frame_limit}-byte frame limit (dropped): {oversized}"
