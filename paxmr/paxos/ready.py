"""What a node hands its driver: effects to carry out, and a status snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

from paxmr.paxos.ballot import Ballot
from paxmr.paxos.client import Reply
from paxmr.paxos.durable import Persist
from paxmr.paxos.log import LogEntry
from paxmr.paxos.messages import Message


@dataclass
class Ready:
    """Everything produced since the last `Node.ready()`. The driver must make `persist` durable
    (one transaction, fsync) before it sends `messages` or delivers `replies`."""

    persist: Persist = field(default_factory=Persist)
    messages: list[tuple[int, Message]] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    applied: list[LogEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: int
    role: str  # follower, candidate or leader
    leader: int | None
    promised: Ballot
    stopped: bool
    voting: bool
    chosen: int  # applied slots, no-ops included
    applied: int  # applied requests: the next position
    in_flight: int  # slots this node leads that are proposed but not applied
    pending: int  # local client requests awaiting an outcome
    peers_heard: tuple[int, ...]  # peers heard from within the last election timeout
