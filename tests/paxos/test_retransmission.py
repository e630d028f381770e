"""What a leader sends a peer that is slow to acknowledge large values: a heartbeat every time,
the values again only at a bounded rate (Node._heartbeat)."""

from __future__ import annotations

from dataclasses import replace

from paxmr.paxos import Committed, Ready, Request
from paxmr.paxos.messages import (
    Accept,
    Accepted,
    CatchupReply,
    CatchupRequest,
    Forward,
    Message,
)
from paxmr.paxos.node import RESEND_BYTES
from tests.paxos.paxos_harness import CONFIG, Harness

VALUE = 3 * RESEND_BYTES
LARGE = replace(CONFIG, max_value_bytes=VALUE, batch_bytes=8 * VALUE)


def _acks_lost(_src: int, _dst: int, msg: Message) -> bool:
    """Everything arrives but the acknowledgements of values (a peer slow to acknowledge):
    the answers to empty Accepts still arrive, so the leader keeps its quorum."""
    return not (isinstance(msg, Accepted) and msg.slots)


def test_a_slow_peer_gets_a_heartbeat_every_time_and_values_again_at_a_bounded_rate():
    h = Harness(config=LARGE)
    leader = h.elect()
    h.advance(0.2)
    peers = [i for i in h.members if i != leader]
    h.wire.clear()
    node = h.node(leader)
    for k in range(4):
        node.submit(Request(f"r{k}", bytes([k]) * VALUE), h.now)
    h.flush(leader)  # the first copies
    h.deliver_where(_acks_lost)
    h.wire.clear()
    heartbeats = 40
    resent = dict.fromkeys(peers, 0)  # value bytes sent to each peer after the first copies
    late = 0  # heartbeats whose first Accept to a peer carried values (the signal waited)
    for _ in range(heartbeats):
        h.now += LARGE.heartbeat_interval
        node.on_timer(h.now)
        h.flush(leader)
        for peer in peers:
            accepts = [
                m for s, d, m in h.wire if (s, d) == (leader, peer) and isinstance(m, Accept)
            ]
            resent[peer] += sum(len(e.value) for a in accepts for _, e in a.entries)
            late += not accepts or bool(accepts[0].entries)
        h.deliver_where(_acks_lost)
        h.wire.clear()
    # Before: the four values on every heartbeat until the leader lost its quorum.
    for peer in peers:
        assert VALUE <= resent[peer] <= heartbeats * RESEND_BYTES + VALUE, resent
    assert late == 0
    assert node.role == "leader"


def test_a_large_value_is_not_sent_again_before_its_first_copy_had_the_time_to_be_written():
    """A follower acknowledges a value only once it has read and written it: a large one is not
    sent again at the next heartbeat, only after the heartbeats that the re-send allowance
    takes to pay for its size (here 3); then, if still unacknowledged, it is."""
    h = Harness(config=LARGE)
    leader = h.elect()
    h.advance(0.2)
    peers = [i for i in h.members if i != leader]
    h.wire.clear()
    node = h.node(leader)
    node.submit(Request("big", b"x" * VALUE), h.now)
    h.flush(leader)  # the first copies
    h.deliver_where(_acks_lost)
    h.wire.clear()
    copies = []  # per heartbeat: the Accepts with values sent to the peers
    for _ in range(10):
        h.now += LARGE.heartbeat_interval
        node.on_timer(h.now)
        h.flush(leader)
        copies.append(
            sum(bool(m.entries) for s, d, m in h.wire if s == leader and isinstance(m, Accept))
        )
        h.deliver_where(_acks_lost)
        h.wire.clear()
    # Before: again at the first heartbeat, to both peers (a 6 MB value written twice by a
    # loaded follower, which then fell silent for over the election timeout).
    assert copies[:2] == [0, 0], copies
    assert sum(copies) >= len(peers), copies  # a copy lost for good is still repaired
    assert node.role == "leader"


def test_a_large_value_whose_first_copies_were_lost_is_sent_again_and_chosen():
    h = Harness(config=LARGE)
    leader = h.elect()
    h.advance(0.2)
    h.submit(leader, "a", b"x" * VALUE)
    assert h.take(
        lambda src, _dst, msg: src == leader and isinstance(msg, Accept) and bool(msg.entries)
    )
    h.advance(0.5)
    assert [r.outcome for r in h.replies[leader]] == [Committed(0, 0)]
    for i in h.members:
        assert [e.request_id for e in h.applied[i]] == ["a"]


def test_a_follower_forwards_a_large_value_again_at_a_bounded_rate():
    value = 8 * RESEND_BYTES  # its forward is paced at 0.4 s, over election_timeout_min
    h = Harness(config=replace(CONFIG, max_value_bytes=value))
    leader = h.elect()
    h.advance(0.2)
    follower = next(i for i in h.members if i != leader)
    flush = h.flush

    def forwards_lost(i: int) -> Ready:
        ready = flush(i)
        h.take(lambda src, _dst, msg: src == follower and isinstance(msg, Forward))
        return ready

    h.flush = forwards_lost  # type: ignore[method-assign]
    start = len(h.readies)
    h.submit(follower, "a", b"x" * value)
    h.advance(0.95)  # before the request's deadline
    sent = [
        len(m.value)
        for i, ready in h.readies[start:]
        if i == follower
        for _, m in ready.messages
        if isinstance(m, Forward)
    ]
    # Before: again every election_timeout_min (0.15 s), seven copies.
    assert 2 <= len(sent) <= 3, sent


def test_a_follower_behind_asks_again_for_large_catch_up_batches_at_a_bounded_rate():
    config = replace(CONFIG, batch_bytes=8 * RESEND_BYTES)  # asks again after 0.4 s, not 0.1 s
    h = Harness(config=config)
    leader = h.elect()
    follower = next(i for i in h.members if i != leader)
    h.node(follower).stop(h.now)
    for k in range(3):
        h.submit(leader, f"r{k}")
        h.deliver()
    h.node(follower).resume(h.now)
    flush = h.flush

    def replies_lost(i: int) -> Ready:
        ready = flush(i)
        h.take(lambda _src, dst, msg: dst == follower and isinstance(msg, CatchupReply))
        return ready

    h.flush = replies_lost  # type: ignore[method-assign]
    start = len(h.readies)
    h.advance(1.0)
    asked = sum(
        isinstance(m, CatchupRequest)
        for i, ready in h.readies[start:]
        if i == follower
        for _, m in ready.messages
    )
    # Before: every two heartbeats (0.1 s), about ten times.
    assert 2 <= asked <= 4, asked
    h.flush = flush  # type: ignore[method-assign]
    h.advance(1.0)
    assert h.node(follower).log.count == 3


def test_a_leader_still_committing_heartbeats_with_what_its_last_ready_announced():
    """Node.beacon, sent by a driver while the last Ready's commit runs: an empty Accept to each
    peer as that Ready could have carried it, never a decision made since (one that counts the
    leader's own accept, which is not on its disk until the commit ends)."""
    h = Harness()
    leader = h.elect()
    h.advance(0.2)
    node = h.node(leader)
    peers = sorted(i for i in h.members if i != leader)
    announced = node.log.length
    node.submit(Request("a", b"x"), h.now)
    ready = node.ready()  # its commit (the leader's own accept of "a") has not ended
    h.wire.extend((leader, dst, msg) for dst, msg in ready.messages)
    while h.wire:  # the peers accept and answer; the leader takes their answers, no Ready
        src, dst, msg = h.wire.popleft()
        h.node(dst).receive(src, msg, h.now)
        if dst != leader:
            h.flush(dst)
    assert node.log.length == announced + 1  # "a" was decided during the commit
    beacons = node.beacon()
    assert sorted(dst for dst, _ in beacons) == peers
    for _, msg in beacons:
        assert isinstance(msg, Accept)
        assert (msg.ballot, msg.entries, msg.length) == (node.ballot, (), announced)
    # Once committed, the next Ready announces "a"; a follower sends no beacon.
    h.flush(leader)
    assert all(msg.length == announced + 1 for _, msg in node.beacon())
    assert h.node(peers[0]).beacon() == []
