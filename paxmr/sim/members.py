"""Membership changes at random moments of a campaign (the `member` fault kind).

Both schedules (world.py, explore.py) ask a `Changes` what to do when a change is due, carry it
out (boot a node, call Node.change_membership on the node it names) and report the replies.
The operations are the ones an operator runs (issue 9): add a spare node as a learner, promote
a caught-up learner, remove a voter (the leader included), replace a voter by a learner in one
entry (after adding it), and replace a founding member by a new machine with the same id: the
old process and its disk are gone, and a new one joins on empty storage at a new address.

A node that joins runs the production Node with storage that cannot vote
(MemoryStorage(bootstrap=False)), the founding members as its `members`, and follows the log
to learn who votes. The schedules' rules that depend on the member count follow the membership
the chosen log ends with, and the changes proposed in its epoch that may still be chosen
(`survives_wipe`); a change is proposed only if a majority of its voters keep a disk that votes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from paxmr.paxos.log import Entry
from paxmr.paxos.membership import Membership, change_request_id

if TYPE_CHECKING:
    import random
    from collections.abc import Mapping

    from paxmr.paxos import Node
    from paxmr.sim.checker import Checker

SPARES = 3  # nodes that may join a campaign, ids after the founders'
OPERATIONS = (
    *("add", "promote", "remove", "remove-leader", "replace", "replace-leader"),
    *("rejoin", "readd", "jump"),
)


def address(node: int, generation: int) -> str:
    return f"10.77.{generation}.{node}:7000"


@dataclass(frozen=True, slots=True)
class Change:
    """What the schedule does: boot `boot` on a new, non-voting disk (killing its old process
    first if it runs), then ask node `at` for the members `voters` and `learners`."""

    operation: str
    at: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    addresses: dict[int, str]
    boot: int | None = None


@dataclass
class Changes:
    founders: tuple[int, ...]
    checker: Checker
    booted: set[int] = field(default_factory=set)
    count: int = 0
    took_effect: Counter[str] = field(default_factory=Counter)  # operation -> changes chosen
    _current: Membership | None = None
    _scanned: int = 0
    # request id -> (the epoch it was proposed in, the membership it makes if chosen)
    _pending: dict[str, tuple[int, Membership]] = field(default_factory=dict)
    _generation: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._current = Membership(0, frozenset(self.founders))
        self.booted = set(self.founders)
        self._generation = dict.fromkeys(self.founders, 0)  # a founder's first address

    @property
    def spares(self) -> tuple[int, ...]:
        last = max(self.founders)
        return tuple(range(last + 1, last + 1 + SPARES))

    def current(self) -> Membership:
        """The membership after the longest chosen prefix any node has applied."""
        membership = self._current
        assert membership is not None
        chosen = self.checker.chosen
        while self._scanned in chosen:
            rid, value = chosen[self._scanned]
            changed = membership.apply(self._scanned, Entry(rid, value))
            if changed is not None:
                membership = changed
                self.took_effect[rid.split("-", 1)[-1]] += 1
            self._scanned += 1
        self._current = membership
        return membership

    def live_memberships(self) -> list[Membership]:
        """The current membership and every change proposed in its epoch (it may yet be
        chosen and take effect)."""
        current = self.current()
        pending = [m for base, m in self._pending.values() if base == current.epoch]
        return [current, *pending]

    def survives_wipe(self, victim: int, voting: Mapping[int, bool], durable: int) -> bool:
        """A lost disk is survivable while a majority of the voters of every membership that is
        or may become current keep disks that vote: the one after the longest log on a disk
        (`durable` slots; a chosen slot no disk holds yet is chosen again in its epoch), and
        every change proposed since."""
        membership = Membership(0, frozenset(self.founders))
        chosen = self.checker.chosen
        for slot in range(durable):
            rid, value = chosen[slot]
            membership = membership.apply(slot, Entry(rid, value)) or membership
        later = [m for base, m in self._pending.values() if base >= membership.epoch]
        return all(
            sum(1 for v in m.voters if v != victim and voting.get(v, False)) >= m.quorum
            for m in [membership, *later]
        )

    def plan(
        self,
        rng: random.Random,
        nodes: Mapping[int, Node | None],
        voting: Mapping[int, bool],
        lengths: Mapping[int, int],
        durable: int,
    ) -> Change | None:
        """The change to make now, or None if no operation fits the cluster as it is.
        `durable`: the longest log on a disk (a rejoin destroys a disk, as a wipe does)."""
        current = self.current()
        options = self._options(rng, current, nodes, lengths)
        if "rejoin" in options:
            weight, founders = options["rejoin"]
            founders = [f for f in founders if self.survives_wipe(f, voting, durable)]
            options["rejoin"] = (weight, founders)
            if not founders:
                del options["rejoin"]
            if not options:
                return None
        if not options:
            return None
        operation = rng.choices(list(options), [w for w, _ in options.values()])[0]
        leader = _leader(nodes, current)
        change = self._shape(rng, operation, options[operation][1], current, leader)
        if change is None:
            return None
        operation, voters, learners, addresses, boot = change
        # Only a change whose voters keep a voting majority: the others would leave the
        # cluster unavailable (a joined node votes only once it fenced, acceptor.py).
        if sum(1 for v in voters if voting.get(v, False)) < len(voters) // 2 + 1:
            return None
        at = self._ask(rng, current, nodes, leader)
        if at is None:
            return None
        return Change(
            operation, at, tuple(sorted(voters)), tuple(sorted(learners)), addresses, boot
        )

    def _shape(
        self,
        rng: random.Random,
        operation: str,
        candidates: list[int],
        current: Membership,
        leader: int | None,
    ) -> tuple[str, set[int], set[int], dict[int, str], int | None] | None:
        """(operation, voters, learners, new addresses, node to boot) for an operation."""
        voters, learners = set(current.voters), set(current.learners)
        boot = None
        addresses: dict[int, str] = {}
        if operation in {"add", "rejoin"}:
            boot = rng.choice(candidates)
            learners.add(boot)
            self._generation[boot] = self._generation.get(boot, -1) + 1
            addresses[boot] = address(boot, self._generation[boot])
        elif operation == "readd":
            learners.add(rng.choice(candidates))
        elif operation == "jump":
            # Two members at once: the rule claims any change is safe (membership.py).
            # At least two voters stay: with one, Node._become_leader raises (see the README).
            out = set(rng.sample(sorted(voters), min(len(voters) - 2, rng.randint(0, 2))))
            into = set(rng.sample(candidates, min(len(candidates), rng.randint(0, 2))))
            if not out and not into:
                return None
            voters, learners = (voters - out) | into, (learners - into) | out
        else:
            if operation != "remove":  # promote or replace
                new = rng.choice(candidates)
                learners.discard(new)
                voters.add(new)
            if operation != "promote":  # remove or replace
                # Remove a voter: the leader now and then, else any.
                old = rng.choice(sorted(current.voters))
                if leader is not None and rng.random() < 0.4:
                    old = leader
                    operation += "-leader"
                voters.discard(old)
        return operation, voters, learners, addresses, boot

    @staticmethod
    def _ask(
        rng: random.Random,
        current: Membership,
        nodes: Mapping[int, Node | None],
        leader: int | None,
    ) -> int | None:
        """Ideally the leader; else a member, which forwards."""
        live = sorted(i for i, n in nodes.items() if n is not None and i in current.members)
        if leader is not None and rng.random() < 0.7:
            return leader
        return rng.choice(live) if live else None

    def _options(
        self,
        rng: random.Random,
        current: Membership,
        nodes: Mapping[int, Node | None],
        lengths: Mapping[int, int],
    ) -> dict[str, tuple[int, list[int]]]:
        """operation -> (weight, the nodes it may take in)."""
        voters, learners = current.voters, current.learners
        pending = set().union(*(m.members for m in self.live_memberships()))
        top = max(lengths.values(), default=0)
        # Caught up: within a few slots of the longest log (now and then, any learner).
        caught_up = [
            n for n in sorted(learners) if lengths.get(n, 0) + 3 >= top or rng.random() < 0.1
        ]
        fresh = [s for s in self.spares if s not in self.booted]
        # Members no longer: a founder's id may come back on a new machine, and a node that
        # still runs (with its disk) may be added back.
        gone = [f for f in sorted(self.booted) if f not in pending]
        running = [f for f in gone if nodes.get(f) is not None]
        options: dict[str, tuple[int, list[int]]] = {}
        if fresh and len(voters | learners) < len(self.founders) + 2:
            options["add"] = (4, fresh[:1])
        if caught_up:
            options |= {"promote": (6, caught_up), "replace": (4, caught_up)}
        if len(voters) > 2:
            options["remove"] = (4, [])
        if gone and (founders := [f for f in gone if f in self.founders]):
            options["rejoin"] = (2, founders)
        if running:
            options["readd"] = (1, running)
        if len(voters) > 2 or caught_up:
            options["jump"] = (1, caught_up)
        return options

    def propose(self, change: Change, node: Node, now: float) -> str:
        """Ask `node` for the change; the request id its reply comes under."""
        self.count += 1
        rid = f"m{self.count}-{change.operation}"
        if change.boot is not None:
            self.booted.add(change.boot)
        value = node.membership.change(change.voters, change.learners, change.addresses)
        full = change_request_id(rid)
        self.checker.submit(full, value)  # the value the node proposes (validity)
        taken = node.membership.apply(node.membership.epoch, Entry(full, value))
        if taken is not None:
            self._pending[full] = (node.membership.epoch, taken)
        node.change_membership(rid, change.voters, change.learners, change.addresses, now)
        return full

    def is_change(self, request_id: str) -> bool:
        return request_id.startswith(change_request_id(""))


def _leader(nodes: Mapping[int, Node | None], current: Membership) -> int | None:
    """A voter that leads, if any (the lowest id, if several think they do)."""
    leaders = sorted(i for i, n in nodes.items() if n is not None and n.role == "leader")
    return leaders[0] if leaders and leaders[0] in current.voters else None
