"""When a leader tells its followers that a slot is chosen (Node._announce_due): a decision on
its own client's request waits up to announce_delay for the next Accept to carry it; anything a
follower waits for goes at once."""

from __future__ import annotations

from dataclasses import replace

from paxmr.paxos.messages import Accept, Accepted
from paxmr.sim.run import run_seed

from .paxos_harness import CONFIG, Harness

DELAY = 0.01
DEFERRING = replace(CONFIG, announce_delay=DELAY)


def _counts(h: Harness) -> dict[int, int]:
    return {i: h.node(i).log.count for i in h.members}


def _empty_accepts(h: Harness, leader: int, since: int) -> int:
    return sum(
        isinstance(msg, Accept) and not msg.entries
        for i, ready in h.readies[since:]
        if i == leader
        for _, msg in ready.messages
    )


def _settled() -> Harness:
    h = Harness(config=DEFERRING)
    h.elect()
    h.advance(0.2)  # past the new ballot's announcement and a heartbeat
    return h


def test_a_decision_on_the_leaders_own_request_rides_on_the_next_accept():
    h = _settled()
    leader = h.elect()
    followers = [i for i in h.members if i != leader]
    start = len(h.readies)
    h.submit(leader, "a")
    h.deliver()
    # The leader applied it and answered its client; no empty Accept went out for it.
    assert h.node(leader).log.count == 1
    assert any(reply.request_id == "a" for reply in h.replies[leader])
    assert all(h.node(i).log.count == 0 for i in followers)
    assert _empty_accepts(h, leader, start) == 0
    # The next request's Accept tells the followers, before the delay is over.
    h.submit(leader, "b")
    h.deliver_where(lambda src, _dst, msg: src == leader and isinstance(msg, Accept))
    assert all(h.node(i).log.count == 1 for i in followers)
    assert _empty_accepts(h, leader, start) == 0
    h.deliver()
    assert _counts(h)[leader] == 2


def test_an_idle_leader_announces_within_the_delay():
    h = _settled()
    leader = h.elect()
    h.submit(leader, "a")
    h.deliver()
    assert h.node(leader).next_deadline() <= h.now + DELAY
    h.advance(DELAY / 2)
    assert sorted(_counts(h).values()) == [0, 0, 1]
    h.advance(DELAY / 2)
    assert set(_counts(h).values()) == {1}


def test_a_forwarded_request_is_announced_at_once():
    """The follower's client waits for the follower's own apply: no delay for it."""
    h = _settled()
    leader = h.elect()
    follower = next(i for i in h.members if i != leader)
    h.submit(follower, "f")
    h.deliver()
    assert any(reply.request_id == "f" for reply in h.replies[follower])
    assert set(_counts(h).values()) == {1}


def test_a_read_index_sent_to_a_follower_is_announced_at_once():
    h = _settled()
    leader = h.elect()
    follower = next(i for i in h.members if i != leader)
    h.submit(leader, "a")
    h.deliver()
    assert h.node(follower).log.count == 0
    h.node(follower).read_index(7, h.now)
    h.flush(follower)
    h.deliver()
    index = next(index for i, r in h.readies if i == follower for rid, index in r.reads if rid == 7)
    assert index == 1
    assert h.node(follower).log.length >= index  # it can answer without waiting for the delay
    # Again with nothing left to announce: no deadline for it (one in the past would spin a
    # driver).
    h.node(follower).read_index(8, h.now)
    h.flush(follower)
    h.deliver()
    assert h.node(leader).next_deadline() > h.now


def test_without_a_delay_every_decision_is_announced_at_once():
    h = Harness()  # announce_delay 0, as before
    leader = h.elect()
    h.advance(0.2)
    start = len(h.readies)
    h.submit(leader, "a")
    h.deliver()
    assert set(_counts(h).values()) == {1}
    assert _empty_accepts(h, leader, start) == len(h.members) - 1
    # The followers answered the announcement too.
    answers = [m for i, r in h.readies[start:] if i != leader for _, m in r.messages]
    assert sum(isinstance(m, Accepted) for m in answers) == 2 * (len(h.members) - 1)


def test_an_announcement_falls_due_while_the_driver_commits():
    """A driver takes no Ready while it commits the last one; a due announcement must not leave
    a deadline that fires again at once (the simulator looped on one)."""
    h = _settled()
    leader = h.elect()
    follower = next(i for i in h.members if i != leader)
    node = h.node(leader)
    h.submit(follower, "f")  # forwarded: announced at once once decided
    # The leader proposes it (its Ready taken: its Accepts are on the wire, its commit runs).
    h.deliver_where(lambda src, dst, _msg: (src, dst) == (follower, leader))
    while h.wire:  # the followers answer; the leader decides, and takes no Ready (committing)
        src, dst, msg = h.wire.popleft()
        h.node(dst).receive(src, msg, h.now)
        if dst != leader:
            h.flush(dst)
    assert node.log.count == 1
    assert node.next_deadline() <= h.now
    node.on_timer(h.now)
    assert node.next_deadline() > h.now
    # The announcement leaves with the next Ready, after the commit.
    sent = [msg for _, msg in node.ready().messages if isinstance(msg, Accept)]
    assert sent
    assert all(msg.length == 1 for msg in sent)


def test_the_simulator_runs_the_core_with_the_prms_delay():
    """`paxmr sim --announce-delay` (the campaigns of this rule) runs another core than the
    default, and keeps the invariants."""
    kinds = frozenset({"drop", "dup", "reorder", "crash"})
    at_once = run_seed(11, 3, kinds, trace=True)
    delayed = run_seed(11, 3, kinds, trace=True, announce_delay=0.02)
    assert (at_once.violations, delayed.violations) == ([], [])
    assert at_once.trace != delayed.trace
    assert delayed.commits == at_once.commits
