"""Small scenarios in phases: the adversary picks who can talk, and when.

A walk is a short scenario on a few requests (in the spirit of Twins, the BFT tester that
enumerates partitions per round, and of the hand-driven schedules of
tests/paxos/test_paxos_regressions.py). It is a sequence of phases; in each phase:

- a group of members can talk to each other (a majority, a minority, a pair, everyone); a
  message on a link with an end outside the group stays in flight: it is held, and delivered
  in a later phase whose group has both its ends (a message delayed by any time at all), or,
  at the end of the phase, lost;
- one member of the group acts: its timer fires (a campaign, a heartbeat, a retry), a request
  is submitted to it, or it crashes, loses power with a write under way (that write is lost),
  or loses its disk; or an earlier message is delivered again (a replay);
- then the group's messages and the commits under way are carried out in a random order,
  with a timer of a group member now and then, until nothing is left or the phase ends early
  (messages still in flight are held, as above).

Each walk draws its own mix (swarm testing): how many phases, how often phases end early, how
many held messages are lost, which actions it favours. Every action runs the production core
through the Explorer's driver (paxos.split, the PRM's catalog). Only safety is checked. The
scenarios are small (a few requests, at most a few phases), so one walk takes milliseconds and a
campaign of thousands of walks covers orders of events that longer random schedules make rare:
a delayed Prepare from an old round, an Accept that reached one follower only, a leader that
learns a slot from catch-up while it still leads, a promise forgotten with a lost disk.

The forget schedule (ForgetWalk) runs the same walks on a second story, FORGET below: a promise
forgotten with a lost disk. Its disk loss strikes right after a commit that holds only a
promise; the random walks of the small schedule never lined up the rest of it (0 in 3,000 on
5 members against the broken fence of issue 8's defect 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paxmr.paxos import Node, Request
from paxmr.paxos.ballot import ZERO
from paxmr.paxos.messages import Accepted
from paxmr.sim.disk import MemoryStorage
from paxmr.sim.explore import Explorer
from paxmr.sim.simulation import EARLY
from paxmr.sim.world import client_value

if TYPE_CHECKING:
    from collections.abc import Callable

    from paxmr.paxos import Ballot, Message, Persist
    from paxmr.sim.simulation import NodeFactory
    from paxmr.sim.world import RunResult

PHASES = 16  # at most, per walk
REQUESTS = 3
PHASE_STEPS = 400  # events in one phase, at most
MAX_WIPES = 2
MAX_CUTS = 3  # power cuts amid a phase's deliveries, per walk
# The actions of a phase's actor, their typical weights (each walk scales them), and the fault
# kind that enables each (the others always run).
ACTS = ("timer", "submit", "crash", "power", "wipe", "replay")
ACT_WEIGHTS = (8, 4, 1, 1, 1, 1)
MOVES = ("elect", "propose", "usurp", "rejoin", "mix")
# The story of most walks (each step may come after detours of random moves): a leader is
# elected, proposes to a few, is usurped by a majority that knows least of it, which chooses,
# and the old leader hears from the others again.
STORY = ("elect", "propose", "usurp", "rejoin")
STORY_ODDS = 0.9
# The forgotten-promise story (ForgetWalk, `--schedule forget`): a node that lost its disk
# raises the rounds as it fences; a candidate's phase 1 then reaches one voter only, which loses
# its disk right after the commit that held that promise; the wiped voter fences among the
# others while the candidate is kept away, leads, and has a value chosen by a bare majority
# (its announcement lost); then the candidate's phase 1 finishes late, with the forgotten
# promise and Prepares it had held.
FORGET = ("elect", "propose", "lose", "forget", "fence", "hide", "late")
# Its moves after the first lost disk run calm: every message of the group is carried out (the
# phase never ends early) and no timer fires amid them (a new campaign would start over).
CALM = frozenset(("forget", "fence", "hide", "late"))
MOVE_WEIGHTS = (3, 4, 3, 3, 3)
ACT_KINDS = {"crash": "crash", "power": "lose-unsynced", "wipe": "wipe", "replay": "replay"}


class PhaseWalk(Explorer):
    forget = False  # follow the forgotten-promise story (FORGET) instead of STORY

    def __init__(  # noqa: PLR0917 - one walk's parameters
        self,
        seed: int,
        size: int,
        kinds: frozenset[str],
        node_factory: NodeFactory = Node,
        driver: str = EARLY,
        phases: int = PHASES,
        trace: bool = False,
    ) -> None:
        super().__init__(
            seed, size, kinds, node_factory, driver, steps=0, trace=trace, requests=REQUESTS
        )
        rng = self.rng
        self.quorum = size // 2 + 1  # of the founders: small walks change no membership
        self.phases = rng.randint(4, phases)
        self.acts = [a for a in ACTS if ACT_KINDS.get(a, "") in kinds | {""}]
        self.act_weights = [
            w * rng.uniform(0.2, 3)
            for a, w in zip(ACTS, ACT_WEIGHTS, strict=True)
            if a in self.acts
        ]
        self.early_end = rng.uniform(0, 0.6)  # how often a phase ends with messages in flight
        self.loss = rng.uniform(0, 0.9) if "drop" in kinds else 0.0  # held messages lost
        self.timer_weight = rng.uniform(0, 0.1)  # a group member's timer amid deliveries
        # A power cut right after a delivery to the walk's flaky node (at most MAX_CUTS).
        self.flaky = rng.choice(self.members)
        self.cut_rate = rng.uniform(0, 0.3) if "lose-unsynced" in kinds else 0.0
        self.cuts = MAX_CUTS
        self.commit_odds = rng.uniform(0.05, 0.5)  # low: commits lag behind the messages
        self.kinds = kinds
        self.detour = rng.uniform(0, 0.3)  # how often a random move comes between the story's
        self.move_weights = [w * rng.uniform(0.2, 3) for w in MOVE_WEIGHTS]
        self.group: tuple[int, ...] = self.members
        self.calm = False
        self.armed: int | None = None  # loses its disk right after a commit of only a promise

    def run(self) -> RunResult:
        phase = 0
        rng = self.rng
        story = list(STORY) if rng.random() < STORY_ODDS else []
        if self.forget:
            story = list(FORGET)
            self.phases = max(self.phases, len(FORGET))
            self.detour = 0.0  # random moves only after it
        for phase in range(1, self.phases + 1):
            self.step = phase
            if story and rng.random() >= self.detour:
                move = story.pop(0)
            else:
                move = rng.choices(MOVES, self.move_weights)[0]
            self._log(f"phase {phase}: {move}")
            self.calm = move in CALM
            getattr(self, f"_move_{move}")()
            if not self.checker.violations:
                self._carry_out()
            if self.checker.violations:
                break
            self._end_phase()
        return self._result(phase)

    # -- moves: who can talk in a phase, and who acts ---------------------------------------

    def _talk(self, group: list[int]) -> None:
        self.group = tuple(sorted(group))
        self._log(f"group {list(self.group)} can talk")

    def _leaders(self) -> list[int]:
        return [i for i, s in self.nodes.items() if s.node is not None and s.node.role == "leader"]

    def _sample(self, pool: list[int], least: int, most: int) -> list[int]:
        k = self.rng.randint(min(least, len(pool)), min(most, len(pool)))
        return self.rng.sample(pool, k)

    def _move_elect(self) -> None:
        """A majority (or more) can talk; one of them campaigns (now and then twice: its timer
        fires again before the first campaign's answers come in)."""
        actor = self.rng.choice(self.members)
        others = [m for m in self.members if m != actor]
        self._talk([actor, *self._sample(others, self.quorum - 1, len(others))])
        self._fire(actor)
        if self.rng.random() < 0.5:
            self._fire(actor)

    def _move_propose(self) -> None:
        """A leader can talk to a few followers: mostly one short of a majority (its proposal
        is accepted, not chosen) or a bare majority (chosen by the fewest it can be); a
        request reaches it."""
        leaders = self._leaders()
        if not leaders:
            self._move_elect()
            return
        leader = self.rng.choice(leaders)
        others = [m for m in self.members if m != leader]
        k = self.rng.choice([self.quorum - 2, self.quorum - 1, self.rng.randint(0, len(others))])
        self._talk([leader, *self.rng.sample(others, k)])
        self._submit_to(self.rng.choice(self.group))

    def _move_usurp(self) -> None:
        """A majority without a leader can talk, mostly the one that knows least of the
        leader's proposals (the adversary's favourite); one of them, with a request waiting,
        campaigns (and wins, if it can), while the old leader leads on, unaware."""
        leaders = self._leaders()
        if not leaders:
            self._move_elect()
            return
        old = self.rng.choice(leaders)
        others = [m for m in self.members if m != old]
        if self.rng.random() < 0.7:
            ballot = self.nodes[old].node.ballot  # type: ignore[union-attr]
            self.rng.shuffle(others)
            others.sort(key=lambda m: self._knows(m, ballot))
            self._talk(others[: self.quorum])
        else:
            self._talk(self._sample(others, self.quorum, len(others)))
        usurper = self.rng.choice(self.group)
        self._submit_to(usurper)  # proposed once it leads
        for _ in range(3):  # a campaign below the leader's ballot is refused: it tries again
            self._fire(usurper)
            self._carry_out()
            node = self.nodes[usurper].node
            if node is None or node.role == "leader" or self.checker.violations:
                return

    def _knows(self, i: int, ballot: Ballot, *, exact: bool = False) -> int:
        """How much of a leader's work at `ballot` node i holds: its applied slots and the
        rows it accepted at that ballot or above (exact: only the rows at that ballot)."""
        node = self.nodes[i].node
        if node is None:
            return 0
        if exact:
            return sum(1 for b, _ in node.acceptor.accepted.values() if b == ballot)
        rows = sum(1 for b, _ in node.acceptor.accepted.values() if b >= ballot)
        return node.log.length + rows

    def _move_rejoin(self) -> None:
        """A leader that others have passed (or any node) hears again from the followers that
        hold its proposals and from a few others (not the other leaders), its clock stalled:
        an earlier frame of its own (of an earlier ballot, if it has one) reaches one of them
        once more (mostly one whose log is ahead), then an earlier frame of another one (mostly
        an acknowledgement) reaches it: delayed or replayed frames."""
        promised = max(s.node.acceptor.promised for s in self.nodes.values() if s.node)
        leaders = self._leaders()
        stale = [i for i in leaders if self.nodes[i].node.ballot < promised]  # type: ignore[union-attr]
        actor = self.rng.choice(stale or leaders or list(self.members))
        node = self.nodes[actor].node
        ballot = node.ballot if node is not None else ZERO
        mine = [m for m in self.members if m != actor and self._knows(m, ballot, exact=True)]
        others = [m for m in self.members if m != actor and m not in leaders and m not in mine]
        self._talk([actor, *mine, *self._sample(others, 1, len(others))])
        if "replay" not in self.kinds:
            return
        sent = [m for m in self.history if m[0] == actor and m[1] in self.group]
        if node is not None and self.rng.random() < 0.8:
            sent = [m for m in sent if _ballot(m[2]) < node.ballot] or sent
            ahead = max(self._length(m[1]) for m in sent) if sent else 0
            sent = [m for m in sent if self._length(m[1]) == ahead] or sent
        reached = None
        if sent:
            self.flight.append(frame := self.rng.choice(sent))
            self.faults["replay"] += 1
            reached = frame[1]
            self._carry_out()
        got = [m for m in self.history if m[1] == actor and m[0] in self.group]
        got = [m for m in got if m[0] != reached] or got  # from another one
        if self.rng.random() < 0.8:  # mostly a late acknowledgement of its proposals
            got = [m for m in got if isinstance(m[2], Accepted)] or got
        if got:
            self.flight.append(self.rng.choice(got))
            self.faults["replay"] += 1

    def _length(self, i: int) -> int:
        return len(self.nodes[i].log.entries)

    def _move_mix(self) -> None:
        """Any few members can talk; one of them acts (a timer, a request, a fault) or an
        earlier message among them is delivered again."""
        self._talk(self._sample(list(self.members), 2, len(self.members)))
        getattr(self, f"_act_{self.rng.choices(self.acts, self.act_weights)[0]}")()

    # -- the forgotten-promise story (FORGET) ---------------------------------------------

    def _move_lose(self) -> None:
        """Everyone can talk; a member loses its disk, restarts empty and campaigns until it
        has fenced (in a core that draws the restart round, the cluster's rounds jump)."""
        self._talk(list(self.members))
        victims = [i for i in self.members if self._may_lose(i)]
        if not victims:
            return
        victim = self.rng.choice(victims)
        if "stale-members" in self.kinds and self.rng.random() < 0.5:
            self._lose_disk_stale(victim)
        else:
            self._lose_disk(victim)
        self._campaign_until_voting(victim)

    def _lose_disk_stale(self, victim: int) -> None:
        """The operator mistake `stale-members` (faults.py): the node restarts configured with
        a stale member list, itself and the members that know least of the log (a majority of
        that list short of the founders' quorum), and only they can talk for now."""
        others = [m for m in self.members if m != victim]
        self.rng.shuffle(others)
        others.sort(key=lambda m: self._knows(m, ZERO))
        kept = others[: self.rng.randint(1, len(others) - 1)]
        members = tuple(sorted([victim, *kept]))
        self.faults["stale-members"] += 1
        self._log(f"disk lost on node {victim}; configured with members {list(members)}")
        self.nodes[victim].disk = MemoryStorage(bootstrap=False)
        self._start(victim, members)
        self._talk(list(members))

    def _move_forget(self) -> None:
        """A candidate's phase 1 reaches one voter only, which loses its disk right after the
        commit that holds its promise (and nothing else); the candidate's other Prepares are
        held, and its campaign stays open."""
        leaders = self._leaders()
        victims = [i for i in self.members if self._may_lose(i)]
        if not victims:
            self._move_elect()
            return
        victim = self.rng.choice(victims)
        candidates = [m for m in self.members if m != victim and m not in leaders]
        if not candidates:
            self._move_elect()
            return
        candidate = self.rng.choice(candidates)
        self._talk([candidate, victim])
        for _ in range(3):  # its timer may first send a heartbeat or a retry
            self._fire(candidate)
            if self.nodes[candidate].node.role == "candidate":  # type: ignore[union-attr]
                break
        if self.rng.random() < 0.5:
            # Its first campaign's Prepares are lost and its timer fires again: the ballot the
            # victim promises is above any the others heard of by two rounds.
            self.flight = [m for m in self.flight if m[0] != candidate]
            self._fire(candidate)
        self.armed = victim
        self._carry_out()
        self.armed = None
        if "drop" in self.kinds:  # its Prepares to the others are lost (late replays some)
            self.flight = [m for m in self.flight if m[0] != candidate or m[1] == victim]

    def _move_fence(self) -> None:
        """A node that must fence campaigns among the members (mostly leaving out those that
        promised the highest ballot, so it learns nothing of it), until it votes again."""
        unfenced = [i for i, s in self.nodes.items() if s.node and _must_fence(s.node)]
        if not unfenced:
            self._move_elect()
            return
        actor = self.rng.choice(unfenced)
        others = [m for m in self.members if m != actor]
        if self.rng.random() < 0.8:
            top = max(self._promised(m) for m in others)
            others = [m for m in others if self._promised(m) < top] or others
        self._talk([actor, *others])
        self._campaign_until_voting(actor)

    def _move_hide(self) -> None:
        """A leader's proposal reaches a bare majority that leaves out the members that
        promised a higher ballot than the leader's (and others at random); a request that
        no node applied yet reaches it."""
        leaders = self._leaders()
        if not leaders:
            self._move_elect()
            return
        leader = self.rng.choice(leaders)
        ballot = self.nodes[leader].node.ballot  # type: ignore[union-attr]
        others = [m for m in self.members if m != leader and self._promised(m) <= ballot]
        self._talk([leader, *self._sample(others, self.quorum - 1, self.quorum - 1)])
        rid = self._submit_to(leader, fresh=True)
        # Once its client is told, the leader's announcement that the value is chosen is lost:
        # the followers hold it as accepted only.
        self._carry_out(until=lambda: rid in self.checker.acked)
        self.flight = [m for m in self.flight if m[0] != leader]

    def _move_late(self) -> None:
        """A candidate whose phase 1 others passed by hears again: its held Prepares reach the
        members that know least of the leader's proposals, the promises sent to it arrive
        (late, or once more), and a request that no node applied yet waits at it."""
        candidates = [i for i, s in self.nodes.items() if s.node and s.node.role == "candidate"]
        if not candidates:
            self._move_usurp()
            return
        actor = max(candidates, key=lambda i: self.nodes[i].node.ballot)  # type: ignore[union-attr]
        ballot = self.nodes[actor].node.ballot  # type: ignore[union-attr]
        leaders = [i for i in self._leaders() if i != actor]
        others = [m for m in self.members if m != actor and m not in leaders]
        self.rng.shuffle(others)
        if leaders:
            lead = self.nodes[leaders[0]].node.ballot  # type: ignore[union-attr]
            others.sort(key=lambda m: self._knows(m, lead))
        self._talk([actor, *others[: self.quorum - 1]])
        self._submit_to(actor, fresh=True)
        # Its Prepares reach the least informed (one short of the group, mostly), so its
        # Accepts reach one more member than its Prepares did.
        reached = others[: self.rng.choice([self.quorum - 2, self.quorum - 2, self.quorum - 1])]
        frames = [
            m
            for m in self.history
            if "replay" in self.kinds
            and _ballot(m[2]) == ballot
            and ((m[0] == actor and m[1] in reached) or m[1] == actor)
        ]
        self.rng.shuffle(frames)
        self.flight.extend(frames)
        self.faults["replay"] += len(frames)

    def _campaign_until_voting(self, i: int) -> None:
        """Node i's timer fires, and the group carries out, until it votes (a few tries)."""
        for _ in range(6):
            node = self.nodes[i].node
            if node is None or self.checker.violations:
                return
            if node.acceptor.voting:
                return
            self._fire(i)
            self._carry_out()

    def _promised(self, i: int) -> Ballot:
        node = self.nodes[i].node
        return node.acceptor.promised if node is not None else ZERO

    def _may_lose(self, i: int) -> bool:
        """Node i may lose its disk: within the walk's bound, while a voting majority of the
        others keeps its disks."""
        lost = self.faults["wipe"] + self.faults["stale-members"]
        if "wipe" not in self.kinds or lost >= MAX_WIPES:
            return False
        return self.changes.survives_wipe(i, self._voting(), self._durable())

    def _lose_disk(self, i: int) -> None:
        self.faults["wipe"] += 1
        self._log(f"disk lost on node {i}")
        self.nodes[i].disk = MemoryStorage(bootstrap=False)
        self._start(i)

    def _finish_commit(self, i: int) -> None:
        syncing = self.nodes[i].syncing
        super()._finish_commit(i)
        if i == self.armed and syncing is not None and _promise_only(syncing[0]):
            self.armed = None
            if self._may_lose(i):
                self._lose_disk(i)

    def _carry_out(self, until: Callable[[], bool] | None = None) -> None:
        """Deliver the group's messages and finish commits, in a random order, until nothing is
        left (or `until` holds); the walk's flaky node may lose power right after a delivery,
        while the commit it caused is under way."""
        rng = self.rng
        steps = (
            rng.randint(0, 3 * len(self.group))
            if not self.calm and rng.random() < self.early_end
            else PHASE_STEPS
        )
        for _ in range(steps):
            group = set(self.group)
            inside = [k for k, m in enumerate(self.flight) if {m.src, m.dst} <= group]
            busy = [i for i, s in self.nodes.items() if s.syncing is not None]
            if (not inside and not busy) or (until is not None and until()):
                return
            roll = rng.random()
            if roll < self.timer_weight and not self.calm:
                self._fire(rng.choice(self.group))
            elif busy and (not inside or roll < self.commit_odds):
                self._finish_commit(rng.choice(busy))
            else:
                dst = self.flight[k := rng.choice(inside)][1]
                self._deliver_one(self.flight.pop(k))
                flaky = dst == self.flaky and self.nodes[dst].syncing is not None
                if flaky and rng.random() < self.cut_rate and self.cuts:
                    self.cuts -= 1
                    self._cut_power(dst)
            if self.checker.violations:
                return
        self._log("phase ends early")

    def _end_phase(self) -> None:
        if self.loss:
            kept = [m for m in self.flight if self.rng.random() >= self.loss]
            self.faults["drop"] += len(self.flight) - len(kept)
            self.flight = kept

    # -- the actor's actions ---------------------------------------------------------------

    def _actor(self) -> int:
        return self.rng.choice(self.group)

    def _act_timer(self) -> None:
        self._fire(self._actor())

    def _act_submit(self) -> None:
        self._submit_to(self._actor())

    def _submit_to(self, i: int, *, fresh: bool = False) -> str | None:
        """A request reaches node i (fresh: one that no node applied yet, or a new one)."""
        node = self.nodes[i].node
        if node is None or self.nodes[i].waiting:
            return None
        pool = self.requests
        if fresh:
            done = {rid for rid, _ in self.checker.chosen.values()}
            pool = [r for r in pool if r.request_id not in done] or [self._new_request()]
        request = self.rng.choice(pool)
        self._log(f"submit {request.request_id} to node {i}")
        node.submit(request, self.now)
        self._flush(i)
        return request.request_id

    def _new_request(self) -> Request:
        rid = f"r{len(self.requests)}"
        request = Request(rid, client_value(self.rng, rid, large=False))
        self.requests.append(request)
        self.checker.submit(rid, request.value)
        return request

    def _act_crash(self) -> None:
        i = self._actor()
        syncing = self.nodes[i].syncing
        if syncing is not None:
            self.nodes[i].disk.write(syncing)
        self.faults["crash"] += 1
        self._log(f"crash and restart node {i}")
        self._start(i)

    def _act_power(self) -> None:
        busy = [i for i in self.group if self.nodes[i].syncing is not None]
        if busy:
            self._cut_power(self.rng.choice(busy))

    def _act_wipe(self) -> None:
        i = self._actor()
        # A lost disk is survivable only while a voting majority keeps its own.
        if self._may_lose(i):
            self._lose_disk(i)

    def _act_replay(self) -> None:
        inside = [m for m in self.history if m[0] in self.group and m[1] in self.group]
        if inside:
            self.flight.append(self.rng.choice(inside))
            self.faults["replay"] += 1


def _ballot(msg: Message) -> Ballot:
    return getattr(msg, "ballot", ZERO)


def _must_fence(node: Node) -> bool:
    return not node.acceptor.voting and node.acceptor.recover_until is None


def _promise_only(persist: Persist) -> bool:
    """A commit that holds a promise and no accepted value or log entry."""
    return persist.promised is not None and not persist.accepted and not persist.log


class ForgetWalk(PhaseWalk):
    """Small scenarios that follow the forgotten-promise story (FORGET), then random moves."""

    forget = True
