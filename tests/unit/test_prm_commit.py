"""Which Readys make the log durable before their messages leave (Storage.commit)."""

from __future__ import annotations

from paxmr import paxos
from paxmr.paxos import reports_applied_length
from paxmr.paxos.messages import Accepted, Nack, Prepare, Promise

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
