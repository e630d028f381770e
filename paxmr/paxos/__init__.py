"""The Multi-Paxos core, sans-IO: plain data in, plain data out (see node.py)."""

from paxmr.paxos.ballot import ZERO, Ballot
from paxmr.paxos.client import MAX_REQUEST_ID, Committed, Refused, Reply, Request
from paxmr.paxos.config import CoreConfig
from paxmr.paxos.durable import DurableState, Persist
from paxmr.paxos.log import (
    CHUNK_PREFIX,
    GENESIS_DIGEST,
    MEMBERSHIP_PREFIX,
    NOOP,
    Entry,
    LogEntry,
    LogStore,
    StoredLog,
    chain_digest,
)
from paxmr.paxos.membership import Membership
from paxmr.paxos.messages import BadMessage, Message, from_wire, to_wire
from paxmr.paxos.node import Node
from paxmr.paxos.ready import NodeStatus, Ready, reports_applied_length, split

__all__ = [
    "CHUNK_PREFIX",
    "GENESIS_DIGEST",
    "MAX_REQUEST_ID",
    "MEMBERSHIP_PREFIX",
    "NOOP",
    "ZERO",
    "BadMessage",
    "Ballot",
    "Committed",
    "CoreConfig",
    "DurableState",
    "Entry",
    "LogEntry",
    "LogStore",
    "Membership",
    "Message",
    "Node",
    "NodeStatus",
    "Persist",
    "Ready",
    "Refused",
    "Reply",
    "Request",
    "StoredLog",
    "chain_digest",
    "from_wire",
    "reports_applied_length",
    "split",
    "to_wire",
]
