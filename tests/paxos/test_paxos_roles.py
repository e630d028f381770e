"""Acceptor, takeover planning and the applied log, each on its own."""

from __future__ import annotations

from paxmr.paxos import NOOP, Ballot, DurableState, Entry, Persist
from paxmr.paxos.acceptor import Acceptor
from paxmr.paxos.leader import plan_takeover
from paxmr.paxos.log import GENESIS_DIGEST, AppliedLog, LogEntry
from paxmr.paxos.messages import AcceptedValue, Promise

A, B, C = Entry("a", b"1"), Entry("b", b"2"), Entry("c", b"3")


def test_ballots_order_by_round_then_node():
    assert Ballot(1, 3) < Ballot(2, 1) < Ballot(2, 2)
    assert str(Ballot(4, 2)) == "4.2"


def test_takeover_re_proposes_the_highest_ballot_value_and_fills_gaps_with_no_ops():
    promises = [
        Promise(
            Ballot(9, 1),
            1,
            (AcceptedValue(2, Ballot(3, 2), A), AcceptedValue(5, Ballot(4, 2), C)),
            2,
        ),
        Promise(Ballot(9, 1), 1, (AcceptedValue(2, Ballot(5, 3), B),), 1),
    ]
    plan = plan_takeover(promises, own_len=1)
    assert plan.length == 2
    assert plan.end == 6
    assert plan.values == {2: B, 3: NOOP, 4: NOOP, 5: C}


def test_takeover_ignores_values_below_a_peer_applied_length():
    promises = [Promise(Ballot(9, 1), 0, (AcceptedValue(1, Ballot(3, 2), A),), 4)]
    plan = plan_takeover(promises, own_len=0)
    assert (plan.length, plan.end, plan.values) == (4, 4, {})


def test_acceptor_accept_and_forget():
    persist = Persist()
    acceptor = Acceptor(DurableState())
    acceptor.raise_promise(Ballot(2, 1), persist)
    assert acceptor.may_accept(Ballot(2, 1))
    assert not acceptor.may_accept(Ballot(1, 3))
    assert not acceptor.may_promise(Ballot(2, 1))
    acceptor.accept(Ballot(2, 1), 0, A, persist)
    acceptor.accept(Ballot(2, 1), 1, B, persist)
    assert acceptor.accepted_at(1, Ballot(2, 1)) == B
    assert acceptor.accepted_at(1, Ballot(3, 1)) is None
    acceptor.forget_below(1)
    assert list(acceptor.accepted) == [1]
    assert persist.promised == Ballot(2, 1)
    assert set(persist.accepted) == {0, 1}


def test_a_replica_without_storage_votes_only_after_fencing_and_catching_up():
    persist = Persist()
    acceptor = Acceptor(DurableState(voting=False))
    assert not acceptor.may_promise(Ballot(5, 1))
    assert not acceptor.may_accept(Ballot(5, 1))
    acceptor.caught_up(10, persist)
    assert not acceptor.voting  # not fenced yet: catching up alone is not enough
    acceptor.fence(Ballot(5, 2), 3, persist)
    acceptor.caught_up(2, persist)
    assert not acceptor.voting
    acceptor.caught_up(3, persist)
    assert acceptor.voting
    assert (persist.voting, persist.recover_until, persist.promised) == (True, 3, Ballot(5, 2))


def test_applied_log_orders_slots_and_numbers_positions():
    log = AppliedLog()
    log.learn(1, NOOP)
    assert log.apply_learned() == []
    log.learn(2, B)
    log.learn(0, A)
    log.learn(0, C)  # a second learn of a slot keeps the first
    applied = log.apply_learned()
    assert applied == [
        LogEntry(0, "a", b"1", 0),
        LogEntry(1, "", b"", None),
        LogEntry(2, "b", b"2", 1),
    ]
    assert log.count == 2
    assert log.digest != GENESIS_DIGEST


def test_equal_logs_give_equal_digests_whatever_the_no_ops():
    first, second = AppliedLog(), AppliedLog()
    for slot, entry in enumerate([A, NOOP, B]):
        first.learn(slot, entry)
    for slot, entry in enumerate([NOOP, A, B, NOOP]):
        second.learn(slot, entry)
    first.apply_learned()
    second.apply_learned()
    assert first.digest == second.digest
    restored = AppliedLog(first.entries)
    assert (restored.digest, restored.count, restored.positions) == (
        first.digest,
        2,
        first.positions,
    )
