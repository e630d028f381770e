"""What a node hands its driver: effects to carry out, and a status snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

from paxmr.paxos.ballot import Ballot
from paxmr.paxos.client import Reply
from paxmr.paxos.durable import Persist
from paxmr.paxos.log import LogEntry
from paxmr.paxos.membership import Membership
from paxmr.paxos.messages import Accepted, Message, Nack, Prepare, Promise

# What depends on the Ready's commit: a Prepare (its round must be durable so that ballots never
# repeat) and the acceptor's replies.
AFTER_COMMIT = (Prepare, Promise, Nack, Accepted)


@dataclass
class Ready:
    """Everything produced since the last `Node.ready()`.

    The driver makes `persist` durable (one transaction, one fsync: a group commit for every
    message of the Ready) and takes the next Ready only once that commit is done. Messages of the
    kinds in AFTER_COMMIT leave only after the commit. Everything else (accepts, chosen
    notifications, catch-up, forwards, replies, `applied`) may leave before it: a decision that
    counts this node's own promise or accept also needs a peer's reply to a message of this
    Ready, so it falls in a later Ready (with two or more members), and the simulator
    checks this ordering (`paxmr sim --driver early`) as well as commit-before-everything
    (`--driver strict`)."""

    persist: Persist = field(default_factory=Persist)
    messages: list[tuple[int, Message]] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    applied: list[LogEntry] = field(default_factory=list)
    # Answers to Node.read_index: (read id, the applied length the read must wait for), or
    # (read id, None) when no read index can be had from here now. Nothing depends on a commit.
    reads: list[tuple[int, int | None]] = field(default_factory=list)


def split(ready: Ready) -> tuple[Ready, Ready]:
    """(what may be carried out before the persist is committed, what must wait for it): the
    PRM and the simulator both run a Ready through this."""
    early: list[tuple[int, Message]] = []
    held: list[tuple[int, Message]] = []
    for item in ready.messages:
        (held if isinstance(item[1], AFTER_COMMIT) else early).append(item)
    early_ready = Ready(
        messages=early, replies=ready.replies, applied=ready.applied, reads=ready.reads
    )
    return early_ready, Ready(messages=held)


def reports_applied_length(held: Ready) -> bool:
    """Whether messages held for a Ready's commit show this node's applied length as one it
    keeps: a Promise does (a new leader fetches the slots below it instead of proposing them),
    so the log is made durable before it leaves (Persist.needs_fsync)."""
    return any(isinstance(msg, Promise) for _, msg in held.messages)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: int
    role: str  # follower, candidate or leader
    leader: int | None
    promised: Ballot
    stopped: bool
    voting: bool
    length: int  # applied slots, no-ops included
    count: int  # applied requests: the next position
    in_flight: int  # slots this node leads that are proposed but not applied
    pending: int  # local client requests awaiting an outcome
    peers_heard: tuple[int, ...]  # peers heard from within the last election timeout
    membership: Membership
    peer_lengths: tuple[tuple[int, int], ...]  # (peer, its applied length as last reported)
