"""Which Readys make the log durable before their messages leave (Storage.commit)."""

from __future__ import annotations

from paxmr import paxos
from paxmr.paxos import reports_applied_length
from paxmr.paxos.messages import Accepted, Nack, Prepare, Promise
from paxmr.services.prm import commit_bytes

B = paxos.Ballot(3, 1)


def test_a_promise_needs_the_log_on_disk() -> None:
    promise = Promise(B, 0, (), 7, epoch=0)
    assert reports_applied_length(paxos.Ready(messages=[(2, promise)]))
    accepted = Accepted(B, (), 7, 0)
    assert reports_applied_length(paxos.Ready(messages=[(3, accepted), (2, promise)]))


def test_other_held_messages_report_no_length_a_leader_relies_on() -> None:
    held: list[tuple[int, paxos.Message]] = [
        (2, Accepted(B, (4,), 7, 0)),
        (3, Nack(B, B, 7, 0)),
        (3, Prepare(B, 7, 0, (1, 2))),
    ]
    assert not reports_applied_length(paxos.Ready(messages=held))
    assert not reports_applied_length(paxos.Ready())


def test_a_commit_counts_the_values_it_accepts() -> None:
    """A follower's accept of a batch of values is as large as they are: such a commit goes to
    a worker thread, not onto the event loop (Prm._commit_here)."""
    accept = paxos.Persist(promised=B)
    accept.accepted[4] = (B, paxos.Entry("r4", b"v" * 300_000))
    accept.accepted[5] = (B, paxos.Entry("r5", b"w" * 5))
    applied = paxos.Persist(log=[paxos.LogEntry(3, "r3", b"x" * 40, 3)])
    assert commit_bytes(accept, []) == 300_005
    assert commit_bytes(applied, [(3, "{}")]) == 42
