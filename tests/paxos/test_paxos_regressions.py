"""Regression tests for the schedules of issue 8 ("The four defects", 1 to 3).

Each test drives `Node`s by hand through the harness: every message stays on the wire until the
test delivers, holds back (`take`, later `put`) or drops it, and every Ready is committed before
its messages leave (the strict order). A node's timer fires only when the test says so (`fire`),
as if the other nodes were slow. The tests assert the property a defect breaks, not how the core
avoids it, and inspect messages only by kind and ballot, so the same schedule runs on the core
before and after the fixes. Where the fixed core refuses a step of the schedule (it needs a
message the adversary would rather hold), the adversary lets it through only once the node
cannot get on without it, and the safety property is checked at the end all the same.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import paxmr.storage
from paxmr.paxos import Committed, LogEntry, Persist, Request
from paxmr.paxos.messages import Accept, Accepted, Nack, Prepare, Promise
from paxmr.settings import Limits
from tests.paxos.paxos_harness import CONFIG, Harness

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from paxmr.paxos import Message


def among(group: Collection[int]) -> Callable[[int, int, Message], bool]:
    """Messages between members of `group` (the others' links are down)."""
    return lambda src, dst, _msg: src in group and dst in group


def link(src: int, dst: int, kind: type | None = None) -> Callable[[int, int, Message], bool]:
    return lambda s, d, msg: s == src and d == dst and (kind is None or isinstance(msg, kind))


def applied_ever(h: Harness) -> dict[int, dict[int, LogEntry]]:
    """Every slot each node applied, in any incarnation (a wiped node's clients were told too)."""
    logs: dict[int, dict[int, LogEntry]] = {i: {} for i in h.members}
    for i, ready in h.readies:
        for entry in ready.applied:
            logs[i].setdefault(entry.slot, entry)
    return logs


def assert_safe(h: Harness) -> None:
    """No two different values applied for one slot; an acknowledged request keeps its place."""
    logs = applied_ever(h)
    slots = sorted({s for log in logs.values() for s in log})
    for slot in slots:
        values = {
            i: (log[slot].request_id, log[slot].value) for i, log in logs.items() if slot in log
        }
        assert len(set(values.values())) == 1, f"slot {slot}: different values applied {values}"
    for i, replies in h.replies.items():
        for reply in replies:
            if isinstance(reply.outcome, Committed):
                slot = reply.outcome.slot
                for j, log in logs.items():
                    if slot in log:
                        got = (log[slot].request_id, log[slot].position)
                        want = (reply.request_id, reply.outcome.position)
                        assert got == want, (
                            f"node {i} acknowledged {reply.request_id!r} at slot {slot}, "
                            f"but node {j} applied {got} there"
                        )


def settle(h: Harness, seconds: float = 5.0) -> None:
    """Heal every link and let the timers run."""
    h.cut.clear()
    h.deliver()
    h.advance(seconds)


# -- defect 1 -----------------------------------------------------------------------------------


def test_defect1_a_follower_never_applies_a_value_that_was_not_chosen():
    h = Harness(5)
    # Node 1's first campaign (round 1): its Prepare to node 4 is delayed, the others lost.
    h.fire(1)
    delayed_prepare = h.take(link(1, 4, Prepare))
    h.wire.clear()
    # Round 2: node 1 leads with {1, 2, 3}; its messages to 4 and 5 are lost.
    h.fire(1)
    h.deliver_where(among({1, 2, 3}))
    assert h.node(1).role == "leader"
    h.wire.clear()
    # Y, submitted at node 2, is forwarded to node 1 and proposed in slot 0; only node 2 gets
    # the Accept, and its Accepted is delayed: Y is accepted by {1, 2} at round 2, not chosen.
    h.submit(2, "Y", b"Y")
    h.deliver_where(link(2, 1))
    h.deliver_where(link(1, 2, Accept))
    delayed_accepted = h.take(link(2, 1, Accepted))
    assert delayed_accepted
    h.wire.clear()
    # Node 3 leads at round 3 with {3, 4, 5} and chooses X in slot 0 (node 4 applies it).
    h.fire(3)
    h.deliver_where(among({3, 4, 5}))
    assert h.node(3).role == "leader"
    h.submit(3, "X", b"X")
    h.deliver_where(among({3, 4, 5}))
    assert [e.request_id for e in h.applied[4]] == ["X"]
    h.wire.clear()
    # The delayed Prepare(round 1) reaches node 4, which Nacks it with its length 1. (The old
    # core stays leader at round 2; the fixed one steps down, as the Nack names round 3.)
    h.put(delayed_prepare)
    h.deliver_where(link(1, 4, Prepare))
    h.deliver_where(link(4, 1, Nack))
    # Node 2's delayed Accepted reaches node 1, which catches up from node 4 (X in slot 0), and
    # whatever node 1 then sends reaches nodes 2 and 4: on the old core an Accept at round 2
    # announcing slot 0 as chosen, and node 2 applies its own row, Y.
    h.put(delayed_accepted)
    h.deliver_where(among({1, 2, 4}))
    assert_safe(h)
    settle(h)
    assert_safe(h)
    logs = {i: [(e.slot, e.request_id) for e in h.applied[i]] for i in h.members}
    assert len(set(map(tuple, logs.values()))) == 1, f"logs differ after healing: {logs}"


# -- defect 2 -----------------------------------------------------------------------------------

BASE = 2**40  # the old storage restarted a lost node at a round drawn from [2**40, 2**41)


def restart_round() -> int | None:
    """The round the storage layer of the code under test restarts a lost node from: the old
    `Storage.open` drew it at random from [2**40, 2**41) (pinned here to the issue's 2**40 + 5);
    the fixed one leaves that to the core."""
    return BASE + 5 if hasattr(paxmr.storage, "LOST_ROUND_BASE") else None


def test_defect2_a_forgotten_promise_never_loses_an_acknowledged_value():
    h = Harness(5)
    # After an earlier disk loss the cluster's rounds are at 2**40 + 1001: node 3 leads there
    # and slot 0 is chosen and applied everywhere.
    for i in h.members:
        h.disks[i].commit(Persist(used_round=BASE + 1000))
        h.start(i)
    h.fire(3)
    h.deliver()
    assert h.node(3).role == "leader"
    assert h.node(3).ballot.round == BASE + 1001
    h.submit(3, "a", b"a")
    h.deliver()
    assert all(len(h.applied[i]) == 1 for i in h.members)

    # Node 5 campaigns at p = 2**40 + 1002; node 1 promises p durably (its Promise is delayed);
    # the Prepare to node 3 is delayed, those to 2 and 4 are lost.
    h.fire(5)
    p = h.node(5).ballot
    assert p.round == BASE + 1002
    delayed_prepare = h.take(link(5, 3, Prepare))
    h.deliver_where(link(5, 1, Prepare))
    assert h.disks[1].load().promised == p
    forgotten_promise = h.take(link(1, 5, Promise))
    assert forgotten_promise
    h.wire.clear()

    # Node 1 loses its disk and restarts; it fences and leads with {2, 3, 4}, while the
    # adversary keeps node 5 (the only one that knows of p) away from it.
    h.wipe(1, used_round=restart_round())
    node1_traffic = lambda s, d, _m: 1 in (s, d)  # noqa: E731
    for _ in range(10):
        h.fire(1)
        h.deliver_where(lambda s, d, _m: 1 in (s, d) and 5 not in (s, d))
        h.wire.clear()  # what node 1 and node 5 send each other is lost
        if h.node(1).role == "leader":
            break
    else:
        # The fixed core fences only with an answer from every member: node 1 does not even
        # campaign before node 5 answered its probe. The adversary must let node 5 in.
        for _ in range(20):
            h.fire(1)
            h.deliver_where(node1_traffic)
            if h.node(1).role == "leader" and h.node(1).status().voting:
                break
    assert h.node(1).role == "leader"
    h.deliver_where(node1_traffic)  # node 1 catches up slot 0 and votes again
    h.wire.clear()

    # Node 1 commits v in slot 1 with {1, 2, 4}; its Accepts to 3 and 5, and the Accept that
    # announces slot 1 as chosen, are lost. Its client is told "committed".
    h.submit(1, "v", b"v")
    h.deliver_where(lambda s, d, m: s == 1 and d in {2, 4} and isinstance(m, Accept))
    h.take(lambda s, _d, _m: s == 1)
    h.deliver_where(lambda s, d, _m: d == 1 and s in {2, 4})
    h.wire.clear()
    assert [r.outcome for r in h.replies[1] if r.request_id == "v"] == [Committed(1, 1)]

    # The delayed Prepare(p) reaches node 3; node 5 gets node 1's forgotten promise, and tries
    # to choose w with {2, 3, 4, 5}.
    h.put(delayed_prepare)
    h.deliver_where(among({3, 5}))
    h.put(forgotten_promise)
    h.deliver_where(link(1, 5))
    h.submit(5, "w", b"w")
    h.deliver_where(among({2, 3, 4, 5}))
    assert_safe(h)
    settle(h)
    assert_safe(h)


# -- defect 3 -----------------------------------------------------------------------------------

# The transport's frame holds the HMAC tag (32 bytes) and a map with src, dst and the message.
ENVELOPE = 64
TALLY = 7 * 1024 * 1024


def accepted_then_leader_dies(limits: Limits, values: dict[str, bytes]) -> None:
    """3 members, the core configured from `limits` as the PRM does it: `values` are accepted
    by both followers, the leader dies before it hears back. Every message must fit in a frame
    (over-limit ones are dropped, as the transport does), and the cluster elects a leader again
    (if need be, once the old leader restarts) which keeps the values (all three accepted them,
    so they were chosen) and commits."""
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
    h.wire.clear()
    for rid, value in values.items():
        h.node(leader).submit(Request(rid, value), h.now)
    h.flush(leader)
    followers = [i for i in h.members if i != leader]
    for _ in range(20):
        h.deliver_where(lambda s, _d, m: s == leader and isinstance(m, Accept))
        h.wire.clear()  # the Accepted replies are lost
        if all(len(h.disks[i].load().accepted) == len(values) for i in followers):
            break
        h.fire(leader)  # a heartbeat retransmits what is not acknowledged
    for i in followers:
        assert len(h.disks[i].load().accepted) == len(values)
    h.crash(leader)

    def elect(seconds: float) -> int | None:
        for _ in range(int(seconds / 0.1)):
            h.advance(0.1)
            if (found := h.leader()) is not None:
                return found
        return None

    new_leader = elect(10.0)
    if new_leader is None:  # not even after the old leader restarts?
        h.start(leader)
        new_leader = elect(10.0)
    oversized = sorted({(kind, size) for _, _, kind, size in h.oversized})
    report = (
        f"leader elected again: {new_leader}; messages over the {h.frame_limit}-byte frame "
        f"limit (dropped): {oversized}"
    )
    assert not oversized, report
    assert new_leader is not None, report
    h.submit(new_leader, "after", b"after")
    settle(h, 1.0)
    for i in followers:
        assert [e.request_id for e in h.applied[i]] == [*values, "after"]


def test_defect3_large_values_in_flight_never_make_the_cluster_unelectable():
    # The figures: five 7 MiB tallies with the default limits (8 MiB values, 32 MiB
    # frames) give a 36.7 MB Promise unless it is split.
    accepted_then_leader_dies(Limits(), {f"t{k}": bytes([k]) * TALLY for k in range(5)})


def test_many_rows_in_flight_never_make_the_cluster_unelectable():
    # Not in the issue; found writing the test above. 4000 values that together fill a batch
    # (about 8 KiB each; the in-flight limit raised to 4096): the Promise page counts only
    # value and request id bytes, and the other ~10 bytes of each row exceed the 32 KiB slack.
    limits = Limits(in_flight=4096)
    size = limits.batch_bytes // 4000 - 8
    accepted_then_leader_dies(limits, {f"r{k:06d}": bytes([k % 251]) * size for k in range(4000)})
