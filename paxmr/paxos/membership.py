"""Who votes: membership changes are log entries, and each one ends an epoch.

The rule (stop signs, as in Lamport, Malkhi and Zhou's "Stoppable Paxos"; also "Vertical
Paxos"): the founding members govern slots from 0 on. A valid membership entry chosen in slot k
is the last slot of its epoch. The new members govern slots from k + 1 on, as a fresh Multi-Paxos
instance whose epoch is k + 1.

- Every ballot message (Prepare, Promise, Nack, Accept, Accepted) names its sender's epoch, and
  a node acts on it only in the same epoch. A node behind catches up (it learns slot k and so
  enters the epoch); a node ahead tells the sender where its log ends.
- A node takes a Prepare or an Accept only from a voter of its epoch, so a node that counts
  itself a member by mistake (a stale member list, a join that founded) gets no promise and no
  accept from the members.
- Entering epoch k + 1 (applying slot k) drops every accepted row above k, durably, before the
  node acts on any message of the new epoch; a campaign or leadership of the old epoch ends.
- Within an epoch the members are fixed, so Paxos's own argument holds there: two majorities
  of the epoch's voters meet, every promise and accept of the epoch is made by a node that has
  applied the same prefix up to the epoch start, and rows of other epochs are neither reported
  in its Promises nor counted by its leaders.
- The log is well defined: slot k's value is chosen in epoch e (the stop sign is itself an
  ordinary slot of epoch e). A leader decides its slots in slot order and stops at a membership
  entry (Node._decide), so no node learns a slot above k from epoch e's quorums; slots above k
  are learned only from epoch k + 1's quorums or from a peer's applied log, which by induction
  holds only such values.
- Rows of the old epoch are gone and carried-over promises only refuse, so a voter that kept
  its storage needs nothing more. A node that starts without state (it joined, or lost its
  disk) votes only after the lost-storage fence (acceptor.py), run in its current epoch; a fence
  whose point lies past a stop sign is run again in the next epoch (Acceptor.new_epoch).

An entry is a change only if it is well formed and names the epoch it was proposed in (`base`):
a stale change (proposed before another took effect) or a forged one changes nothing, on every
node alike. Any change is safe by this rule; one member at a time (add as a learner, promote,
remove) is what keeps a majority of the new voters holding the log, so the tools do only that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from paxmr.paxos.log import MEMBERSHIP_PREFIX, Entry

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from paxmr.paxos.log import LogEntry

MAX_MEMBERS = 64
MAX_NODE_ID = 2**31 - 1
MAX_ADDRESS = 255


@dataclass(frozen=True)
class Membership:
    """The members of the epoch that starts at slot `epoch`. A learner gets the log but does not
    vote; `addresses` holds where added members are (a founding member's address comes from the
    configuration)."""

    epoch: int
    voters: frozenset[int]
    learners: frozenset[int] = frozenset()
    addresses: Mapping[int, str] = field(default_factory=dict)

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    @property
    def fence_quorum(self) -> int:
        """Promises a voter that lost its storage needs from the other voters to fence
        (acceptor.py, step 1): enough that every quorum holds one of them besides the lost
        node. A quorum has `quorum` voters, at most one of them the lost one, so at least
        quorum - 1 of the other len - 1; promises from len - quorum + 1 of those meet each.
        With an odd count that is a quorum; with an even count one fewer, so in a two-voter
        epoch the voter that kept its disk is enough."""
        return len(self.voters) - self.quorum + 1

    def change(
        self, voters: Iterable[int], learners: Iterable[int], addresses: Mapping[int, str]
    ) -> bytes:
        """The value of an entry that changes this membership into the given one; `addresses`
        adds to or replaces the addresses of the members that stay."""
        voters, learners = set(voters), set(learners)
        kept = {k: v for k, v in self.addresses.items() if k in voters | learners}
        kept.update(addresses)
        body = {
            "base": self.epoch,
            "voters": sorted(voters),
            "learners": sorted(learners),
            "addresses": {str(k): v for k, v in sorted(kept.items())},
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def apply(self, slot: int, entry: Entry) -> Membership | None:
        """The membership from slot + 1 on if `entry`, chosen in `slot`, changes this one."""
        if not entry.is_membership:
            return None
        body = _parse(entry.value)
        if body is None or body["base"] != self.epoch:
            return None
        return Membership(slot + 1, body["voters"], body["learners"], body["addresses"])


def replay(founding: Membership, log: Iterable[LogEntry]) -> Membership:
    """The membership after an applied log."""
    membership = founding
    for item in log:
        changed = membership.apply(item.slot, Entry(item.request_id, item.value))
        if changed is not None:
            membership = changed
    return membership


def change_request_id(request_id: str) -> str:
    return MEMBERSHIP_PREFIX + request_id


def _parse(value: bytes) -> dict[str, Any] | None:
    """A change's fields, or None for anything malformed (a proposer may put any bytes here)."""
    if len(value) > MAX_MEMBERS * (MAX_ADDRESS + 32) + 256:
        return None
    try:
        body = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if type(body) is not dict or set(body) != {"base", "voters", "learners", "addresses"}:
        return None
    voters, learners = _ids(body["voters"]), _ids(body["learners"])
    addresses = body["addresses"]
    if (
        type(body["base"]) is not int
        or voters is None
        or learners is None
        or not voters
        or voters & learners
        or len(voters | learners) > MAX_MEMBERS
        or type(addresses) is not dict
        or len(addresses) > MAX_MEMBERS
    ):
        return None
    parsed: dict[int, str] = {}
    for key, address in addresses.items():
        if not key.isdigit() or type(address) is not str or len(address) > MAX_ADDRESS:
            return None
        parsed[int(key)] = address
    return {"base": body["base"], "voters": voters, "learners": learners, "addresses": parsed}


def _ids(value: Any) -> frozenset[int] | None:
    if type(value) is not list or len(value) > MAX_MEMBERS:
        return None
    if not all(type(v) is int and 1 <= v <= MAX_NODE_ID for v in value):
        return None
    return frozenset(value)
