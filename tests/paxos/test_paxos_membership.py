"""Membership changes through the log (paxmr/paxos/membership.py), driven by hand."""

from __future__ import annotations

from dataclasses import replace

from paxmr.paxos import Ballot, Committed, DurableState, Entry, LogEntry, Persist, Refused
from paxmr.paxos.membership import Membership, change_request_id, replay
from paxmr.paxos.messages import Accept, Accepted, CatchupReply
from tests.paxos.paxos_harness import CONFIG, Harness
from tests.paxos.test_paxos_regressions import assert_safe, settle

BIG = replace(CONFIG, max_value_bytes=1024)  # a change names every member


def change(h: Harness, at: int, rid: str, voters, learners=(), addresses=None) -> str:
    node = h.node(at)
    full = node.change_membership(rid, voters, learners, addresses or {}, h.now)
    h.flush(at)
    return full


def committed(h: Harness, at: int, rid: str) -> Committed:
    outcomes = [r.outcome for r in h.replies[at] if r.request_id == rid]
    assert outcomes, f"no reply to {rid!r} at node {at}"
    assert isinstance(outcomes[-1], Committed), outcomes
    return outcomes[-1]


def logs_agree(h: Harness, nodes) -> None:
    digests = {i: (h.node(i).log.length, h.node(i).log.digest) for i in nodes}
    assert len(set(digests.values())) == 1, digests


def test_grow_from_three_to_five_while_requests_land():
    h = Harness(3, BIG, spares=2)
    leader = h.elect()
    for k in range(5):
        h.submit(leader, f"a{k}")
    h.deliver()
    for new in (4, 5):
        voters = sorted(h.node(leader).membership.voters)
        rid = change(h, leader, f"learn-{new}", voters, [new], {new: f"10.0.0.{new}:7000"})
        h.submit(leader, f"during-{new}")
        at = leader
        settle(h, 2.0)
        leader = h.elect()
        assert committed(h, at, rid).position is None
        assert h.node(new).membership.learners == frozenset({new})
        assert h.node(new).log.length == h.node(leader).log.length  # the learner caught up
        at = leader
        rid = change(h, leader, f"promote-{new}", [*voters, new])
        h.submit(leader, f"after-{new}")
        settle(h, 3.0)
        leader = h.elect()
        committed(h, at, rid)
    for i in h.members:
        assert h.node(i).membership.voters == frozenset(range(1, 6))
        assert h.node(i).membership.addresses == {4: "10.0.0.4:7000", 5: "10.0.0.5:7000"}
    settle(h, 3.0)
    logs_agree(h, h.members)
    applied = {e.request_id for e in h.node(1).log.entries if e.position is not None}
    assert {f"a{k}" for k in range(5)} | {"during-4", "after-4", "during-5", "after-5"} <= applied
    # The joined nodes vote by now: a majority of the five without two founders chooses.
    h.cut = {1, 2}
    leader = h.elect()
    h.submit(leader, "without-founders")
    h.advance(1.0)
    assert "without-founders" in h.node(leader).log.positions
    settle(h)
    assert_safe(h)


def test_removing_the_leader_elects_another_and_the_removed_node_stays_quiet():
    h = Harness(3, BIG)
    leader = h.elect()
    h.submit(leader, "before")
    h.deliver()
    rest = [i for i in h.members if i != leader]
    change(h, leader, "drop-leader", rest)
    h.deliver()
    assert h.node(leader).role == "follower"
    assert not h.node(leader).is_voter
    new = h.elect()
    assert new in rest
    h.submit(new, "after")
    h.advance(2.0)
    for i in h.members:
        assert "after" in h.node(i).log.positions  # the removed node still learns the log
        assert h.node(i).membership.voters == frozenset(rest)
    # Cut off from the others, the removed node never campaigns.
    h.cut = {new}
    h.advance(3.0)
    assert h.node(leader).role == "follower"
    assert_safe(h)


def test_a_stale_or_forged_change_changes_nothing_anywhere():
    h = Harness(3, BIG)
    leader = h.elect()
    founding = h.node(leader).membership
    # Two changes proposed in the same epoch: the first takes effect, the second is stale.
    change(h, leader, "first", [1, 2, 3], [9])
    change(h, leader, "second", [1, 2])
    settle(h, 3.0)
    for i in h.members:
        assert h.node(i).membership.voters == founding.voters
        assert h.node(i).membership.learners == frozenset({9})
    # Values no honest proposer makes, under a membership request id.
    for value in [b"", b"[]", b"{", b'{"base":0}', b"\xff" * 40]:
        assert founding.apply(3, Entry(change_request_id("x"), value)) is None
    bad = Membership(0, frozenset({1})).change([], [], {})  # no voters at all
    assert founding.apply(3, Entry(change_request_id("x"), bad)) is None
    # A client may not use the reserved prefix.
    h.submit(leader, change_request_id("sneaky"), founding.change([1], [], {}))
    refused = h.replies[leader][-1].outcome
    assert isinstance(refused, Refused)
    assert refused.code == "invalid"
    assert_safe(h)


def test_replay_gives_the_membership_after_a_log():
    founding = Membership(0, frozenset({1, 2, 3}))
    value = founding.change([1, 2, 3, 4], [], {4: "h4:7000"})
    log = [
        LogEntry(0, "r", b"v", 0),
        LogEntry(1, change_request_id("c"), value, None),
        LogEntry(2, change_request_id("stale"), value, None),
    ]
    now = replay(founding, log)
    assert (now.epoch, now.voters, now.addresses) == (2, frozenset({1, 2, 3, 4}), {4: "h4:7000"})


def test_a_node_in_the_new_epoch_refuses_the_old_epochs_accepts():
    """An old-epoch leader that has not applied the stop sign keeps sending accepts for the
    slots after it, possibly at a ballot above every promise of the new epoch; a node of the
    new epoch must not accept them (membership.py): its row would count in the new epoch."""
    h = Harness(3, BIG)
    leader = h.elect()
    change(h, leader, "grow", [1, 2, 3], [4])
    settle(h, 3.0)
    follower = next(i for i in h.members if i != h.elect())
    new_epoch = h.node(follower).membership.epoch
    assert new_epoch > 0
    high = Ballot(10**6, leader)
    stale = Accept(high, ((new_epoch + 5, Entry("old", b"x")),), 0, epoch=0)
    h.node(follower).receive(leader, stale, h.now)
    ready = h.flush(follower)
    assert h.node(follower).acceptor.accepted.get(new_epoch + 5) is None
    assert not any(isinstance(m, Accepted) for _, m in ready.messages)
    assert any(isinstance(m, CatchupReply) for _, m in ready.messages)  # where the log ends
    h.wire.clear()
    assert_safe(h)


def test_entering_an_epoch_drops_the_old_rows_durably():
    h = Harness(3, BIG)
    leader = h.elect()
    follower = next(i for i in h.members if i != leader)
    # A row the follower accepted in the old epoch, above where the change will land.
    ballot = h.node(leader).ballot
    h.node(follower).receive(leader, Accept(ballot, ((40, Entry("void", b"x")),), 0), h.now)
    h.flush(follower)
    assert 40 in h.disks[follower].load().accepted
    change(h, leader, "shrink", sorted(h.members))  # same voters: still a new epoch
    settle(h, 2.0)
    assert h.node(follower).membership.epoch > 0
    assert 40 not in h.disks[follower].load().accepted
    assert 40 not in h.node(follower).acceptor.accepted
    # Nor did the new epoch's leader find it and propose it again.
    assert all("void" not in h.node(i).log.positions for i in h.members)


def test_persist_discard_keeps_the_new_epochs_rows():
    state = DurableState(
        accepted={5: (Ballot(1, 1), Entry("a", b"")), 9: (Ballot(1, 1), Entry("b", b""))}
    )
    persist = Persist(discard_from=7, accepted={8: (Ballot(2, 1), Entry("c", b""))})
    persist.apply_to(state)
    assert sorted(state.accepted) == [5, 8]


def test_a_single_voter_takes_over_with_requests_waiting():
    """Found by the simulator (a two-at-once change left one voter): a leader whose own accept
    is a quorum applies a slot inside _become_leader's loop over the pending requests, which
    removes it from that dict: RuntimeError (dictionary changed size during iteration) out of
    on_timer, which would crash the PRM; the founding one-node cluster too."""
    h = Harness(3, BIG)
    leader = h.elect()
    change(h, leader, "alone", [leader])
    h.submit(leader, "waiting")  # proposed after the stop sign: it waits for the new epoch
    settle(h, 2.0)
    assert h.node(leader).membership.voters == frozenset({leader})
    assert "waiting" in h.node(leader).log.positions
    assert_safe(h)
    single = Harness(1, BIG)
    single.submit(1, "x")  # no leader yet: pending
    single.advance(1.0)
    assert "x" in single.node(1).log.positions


def test_a_node_that_fenced_before_a_stop_sign_votes_again_once_idle():
    """Found by the simulator (`paxmr sim --seed 152 --seeds 1 --nodes 3`, liveness). Node 3
    loses its disk and fences in epoch 0 against 1 and 2, which hold accepted rows for the
    stop sign (slot 0) and for A after it (slot 1): its fence point is 2. Applying the stop
    sign drops the row of slot 1 everywhere (it was never chosen), and A's client is gone: no
    one proposes slot 1 again. Node 3 then waits for slot 1 forever and never votes, while it
    even leads; one more failure leaves the cluster without a quorum."""
    h = Harness(3, BIG)
    h.fire(1)
    h.deliver()
    change(h, 1, "same", [1, 2, 3])  # slot 0: a stop sign
    h.submit(2, "A")  # forwarded to node 1: slot 1, past the stop sign
    h.deliver_where(lambda s, d, _: (s, d) == (2, 1))
    h.deliver_where(lambda s, _d, m: s == 1 and isinstance(m, Accept))
    h.take(lambda _s, _d, m: isinstance(m, Accepted))  # no one learns slot 0 is chosen
    h.crash(2)  # node 2 restarts (its disk survives): A's client is gone
    h.start(2)
    h.wipe(3)
    for _ in range(6):  # node 3 probes, then fences in epoch 0
        h.fire(3)
        h.deliver()
        if h.node(3).acceptor.recover_until is not None:
            break
    # Its fence point lies at or past the stop sign's successor: it fences again in epoch 1
    # (Acceptor.new_epoch); the core that had this defect counted 2 here.
    fence_point = h.node(3).acceptor.recover_until
    assert fence_point is not None
    assert fence_point >= 1
    settle(h, 5.0)
    assert all(h.node(i).membership.epoch == 1 for i in h.members)
    assert_safe(h)
    assert h.node(3).acceptor.voting, (h.node(3).log.length, h.node(3).acceptor.recover_until)


def test_a_node_that_is_not_a_voter_gets_no_promise_and_no_accept():
    """A node configured with another member list (it counts itself a founder) campaigns:
    the real members neither promise nor accept for it (issue 9's second unsafe operation)."""
    h = Harness(3, BIG)
    leader = h.elect()
    h.submit(leader, "chosen")
    h.advance(1.0)
    outsider = Harness(5, BIG)  # nodes 4 and 5 believe the founders are 1..5
    for i in (4, 5):
        h.disks[i] = outsider.disks[i]
        h.nodes[i] = outsider.node(i)
        h.replies[i], h.applied[i] = [], []
    h.members = (1, 2, 3, 4, 5)
    h.cut = {leader}
    for _ in range(20):
        for i in (4, 5):
            h.fire(i)
        h.deliver()
    for i in (4, 5):
        assert h.node(i).role != "leader"
        assert "chosen" not in h.node(i).log.positions or h.node(i).log.length == 1
    for i in (1, 2, 3):
        assert all(b.node in (1, 2, 3) for b in [h.node(i).acceptor.promised])
    settle(h)
    assert_safe(h)


def test_a_fence_past_the_stop_sign_is_run_again_in_the_new_epoch(tmp_path):
    """A node that lost its disk fenced in epoch e up to a point past the stop sign: its old
    incarnation may have voted in the next epoch, whose new members the fence never asked.
    Entering that epoch it stops voting and forgets the fence, durably."""
    from paxmr.paxos.acceptor import Acceptor  # noqa: PLC0415
    from paxmr.storage import Storage  # noqa: PLC0415

    storage = Storage.open(tmp_path / "prm.db")
    storage.commit(Persist(recover_until=12, voting=True))
    acceptor = Acceptor(storage.load())
    persist = Persist()
    acceptor.new_epoch(10, persist)  # the stop sign is slot 9; the fence reached slot 11
    storage.commit(persist)
    again = Acceptor(storage.load())
    for a in (acceptor, again):
        assert (a.voting, a.recover_until) == (False, None)
    # A fence that ended before the stop sign covers the new epoch too.
    storage.commit(Persist(recover_until=8, voting=True))
    acceptor = Acceptor(storage.load())
    acceptor.new_epoch(10, Persist())
    assert (acceptor.voting, acceptor.recover_until) == (True, 8)
    storage.close()


def test_the_leader_refuses_a_change_that_leaves_no_voting_quorum():
    """Found by the simulator: a learner promoted while a voter had lost its disk left two of
    four voters able to vote, and neither node without state could fence (it needs a majority
    of promises): the cluster stopped for good. The leader now refuses such a change."""
    h = Harness(3, BIG, spares=1)
    leader = h.elect()
    change(h, leader, "learn", sorted(h.founders), [4])
    settle(h, 2.0)
    leader = h.elect()
    down = next(i for i in h.founders if i != leader)
    h.wipe(down)  # no vote until it fences, which it cannot do cut off
    h.cut = {down}
    h.advance(1.0)
    assert h.leader() == leader
    rid = change(h, leader, "promote", [*h.founders, 4])
    h.advance(0.5)
    outcome = h.replies[leader][-1].outcome
    assert h.replies[leader][-1].request_id == rid
    assert isinstance(outcome, Refused), outcome
    assert outcome.code == "no_quorum", outcome
    assert "fewer than the 3 a quorum needs" in outcome.reason
    assert 4 not in h.node(leader).membership.voters
    settle(h, 3.0)  # the wiped node fences with the two others: whole again
    assert h.node(down).acceptor.voting
    rid = change(h, h.elect(), "promote-again", [*h.founders, 4])
    settle(h, 3.0)
    assert all(4 in h.node(i).membership.voters for i in h.members)
    assert_safe(h)
