"""The async walks' connections (paxmr/sim/explore.py, Explorer._connected), as
services/transport.py makes them: one per sending process and receiving process, the sender's
hello checked as the first message of it arrives, kept until the receiver's process ends. So a
late message of a process since ended reaches only a receiver's process that ran at the same
time, judged by the hello that process had; a running process dials with its hello as it is
now."""

from __future__ import annotations

from paxmr.paxos.messages import Forward
from paxmr.sim.explore import Explorer, Sent
from paxmr.sim.simulation import EARLY

MSG = Forward("x", b"x")


def _walk() -> Explorer:
    """Three nodes started, nothing sent yet."""
    return Explorer(1, 3, frozenset(), driver=EARLY)


def _send(walk: Explorer, src: int, dst: int) -> Sent:
    return walk._sent(src, dst, MSG, walk._view(src))


def _reaches(walk: Explorer, item: Sent) -> bool:
    return walk._connected(item, walk.nodes[item.dst])


def test_a_late_message_of_an_ended_process_reaches_a_receiver_that_ran_beside_it() -> None:
    """Node 1's process sends, then ends (a crash) and starts again: its message still reaches
    node 2's process, which ran while it did, whether node 2 had accepted its connection yet
    or reads its hello only now."""
    walk = _walk()
    accepted_first = _send(walk, 1, 2)
    assert _reaches(walk, accepted_first)
    late = _send(walk, 1, 2)
    unread = _send(walk, 1, 3)
    walk._start(1)
    assert late.run != walk.nodes[1].run
    assert _reaches(walk, late)  # on the connection node 2 accepted
    assert _reaches(walk, unread)  # its hello read only now, as the ended process had it


def test_a_late_message_of_an_ended_process_is_lost_to_a_receiver_started_after() -> None:
    """Node 1's process sends and ends; node 2's process starts after it ended: no
    connection ever joined the two, so the message is lost. Node 2's connections end with
    its process: one it had accepted from node 1's process is gone too."""
    walk = _walk()
    late = _send(walk, 1, 2)
    assert _reaches(walk, late)
    walk._start(1)
    walk._start(2)
    assert not _reaches(walk, late)
    assert _reaches(walk, _send(walk, 1, 2))  # the running process dials the new one


def test_a_late_message_is_judged_by_the_hello_its_own_process_had() -> None:
    """Node 2 heard of node 1's storage through node 3; node 1's storage is demoted (a new
    nonce) and node 2 sees the new one: the old nonce is retired. A late message of the
    process before, on a connection node 2 had not accepted, comes with that process's
    hello (the old nonce), which node 2 refuses; the running process's hello is let in."""
    walk = _walk()
    late = _send(walk, 1, 2)
    old = walk.nodes[1].disk.stamp.nonce
    walk.nodes[2].sightings.heard(1, late.stamp, ())
    walk._demote(1, "shown its storage went back")
    assert walk.nodes[1].disk.stamp.nonce != old
    walk.nodes[2].sightings.saw(1, walk.nodes[1].disk.stamp)
    assert walk.nodes[2].sightings.replaced(1, old)
    assert not _reaches(walk, late)
    assert _reaches(walk, _send(walk, 1, 2))
