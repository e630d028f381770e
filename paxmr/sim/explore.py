"""Asynchronous schedules: no clock orders the messages, a seeded scheduler does.

At each step the scheduler draws one enabled action: deliver any message in flight (not the
oldest: any), drop one, deliver again a message sent earlier (a replay), fire one node's timer
(the clock moves only then), submit a request, crash and restart a node, lose a node's disk,
cut links (holding their messages: a leader with a minority, or any links) and heal them, or
stall a node's timers for a while (a paused process, a slow clock: safety must not depend on
timing), or forward a forged value from a peer that holds the cluster key; commits finish in any
order (a power cut loses the one under way). Fault actions run only for the fault kinds asked
for (stall counts as delay, cut as partition, power as lose-unsynced). With the chunks workload
a few requests are tallies over the value limit: their chunks, and their manifest once every
chunk is chosen (the PRM's order, world.chunked_requests). Effects leave around the commit
as the driver says (paxos.split for the PRM's early order). It reaches orders of events that
clocks make rare. Only safety is checked (agreement, validity, no duplicate, acknowledgements,
frame sizes): an adversarial scheduler can starve any protocol.

Each message carries what the PRM's frames carry to show a storage that went back in time
(paxmr/stamps.py, shared with the PRM): its sender's write count and what the sender saw itself
of the other nodes (its relay). Connections are as the transport makes them: one per sending
process and receiving process, which the sender dials as both run, with a hello (its stamp and
latest sessions and what it saw of the receiver, checked as the first message of the
connection arrives), kept by the receiver until its process ends (INBOUND_PER_PEER of them per
peer). So a late message of a process since ended arrives on the connection it had to the
receiver's process, its hello as that process had it, if the two ran at the same time, and is
lost otherwise; a replay is sent again by its sender's process as it is now (TLS refuses
recorded frames replayed). Each receiver's process notes the hello it accepted last from each
peer and drops, by the transport's rules (stamps.ended, stamps.from_ended_run), a hello of a run
that hello records as ended and a message of another run that shows writes that hello's storage
no longer holds. A node starting opens a new session of its storage and asks
the peers it reaches, as prm.compare_with_peers does. A storage shown to have gone back is
demoted (forgetful, a new nonce), at start or, told later, by ending and starting again, as the
PRM does. A rolled-back storage restarts, half the time cut off from every node, so that it
campaigns alone before any peer can tell it; a rollback loses writes as a lost disk does, so
it strikes only while a majority of voters keep disks that vote and are not rolled back
unshown (_voting). What the stamps are for is checked apart from them (_check_heard): each
storage chains its durable writes (disk.Write), and no running node may hear a storage of a
nonce it heard without writes it heard it make.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from paxmr import chunks
from paxmr.paxos import Committed, Node, Ready, Request
from paxmr.paxos.messages import Forward
from paxmr.services.transport import INBOUND_PER_PEER
from paxmr.sim.checker import NodeLog
from paxmr.sim.disk import MemoryStorage, Write, made
from paxmr.sim.faults import MESSAGE_KINDS, cut_links
from paxmr.sim.members import Changes
from paxmr.sim.simulation import EARLY, Simulation
from paxmr.sim.world import (
    CHUNKED,
    SIM_CONFIG,
    RunResult,
    by_driver,
    chunked_requests,
    client_value,
    forged_value,
    frame_violation,
    writes,
)
from paxmr.stamps import Sessions, Sightings, Stamp, ended, founded_again, from_ended_run

if TYPE_CHECKING:
    from paxmr.paxos import Message, Persist
    from paxmr.sim.simulation import NodeFactory

STEPS = 500
REQUESTS = 16
ACTIONS = (  # and "forge" (FORGE_WEIGHT)
    *("deliver", "sync", "drop", "replay", "timer", "submit"),
    *("crash", "power", "wipe", "cut", "stall", "member"),
    *("stale", "reinit", "rollback"),
)
# Typical weights; each walk scales each by a random factor (swarm testing: a walk that hardly
# syncs or hardly delivers explores what an even mix does not).
WEIGHTS = (70, 40, 5, 3, 7, 6, 1, 2, 1, 4, 2, 4, 1, 1, 1)
# Drawn apart (`_forge_rng`), so that adding it moved no other walk's draws: the small and
# forget schedules' walks (phases.py, which build on this class) stay as their bounds were
# measured.
FORGE_WEIGHT = 1
# The fault kind that enables each fault action (the others always run).
ACTION_KINDS = {
    "forge": "forge",
    "drop": "drop",
    "replay": "replay",
    "crash": "crash",
    "power": "lose-unsynced",
    "wipe": "wipe",
    "cut": "partition",
    "stall": "delay",
    "member": "member",
    "stale": "stale-members",
    "reinit": "reinit",
    "rollback": "restore-old",
}
MAX_WIPES = 2
SNAPSHOTS = 32  # earlier durable states kept per node, for restore-old


@dataclass
class _Node:
    disk: MemoryStorage = field(default_factory=MemoryStorage)
    node: Node | None = None
    log: NodeLog = field(default_factory=NodeLog)
    syncing: tuple[Persist, Ready] | None = None  # the commit in progress, what waits for it
    snapshots: list[MemoryStorage] = field(default_factory=list)  # earlier disks (restore-old)
    sightings: Sightings = field(default_factory=Sightings)  # what the running node saw
    run: int = 0  # which start of the node's process this is (Explorer.runs)
    # The stamp and opens of the hello its process accepted last from each peer (the
    # transport's _latest: stamps.from_ended_run, ended); its process's, so _start clears it.
    hellos: dict[int, tuple[Stamp, Sessions]] = field(default_factory=dict)
    # A founding storage that has written nothing: the founders yet to answer it before its
    # core runs (prm.Prm.hear_founders); meanwhile it only answers.
    waiting: set[int] = field(default_factory=set)


class View(NamedTuple):
    """What a node saw of the others when it sent a message: its seen stamps and retired
    nonces (the relay, and for the receiver the hello's view)."""

    seen: dict[int, Stamp]
    retired: dict[int, tuple[int, ...]]


class Sent(NamedTuple):
    src: int
    dst: int
    msg: Message
    stamp: Stamp  # the sender's storage's as it sent it (a frame's write count, a hello's nonce)
    view: View
    number: int  # in the order messages were sent
    last: Write | None  # the sender's storage's latest durable write as it sent it
    run: int  # the sender's process (_Node.run): a connection is one process's
    sessions: Sessions  # the sender's storage's latest opens as it sent it (its process's)


class Explorer(Simulation):
    def __init__(  # noqa: PLR0917 - one walk's parameters
        self,
        seed: int,
        size: int,
        kinds: frozenset[str],
        node_factory: NodeFactory = Node,
        driver: str = EARLY,
        steps: int = STEPS,
        trace: bool = False,
        requests: int = REQUESTS,
    ) -> None:
        super().__init__(seed, size, node_factory, driver, trace)
        self.steps = steps
        self.kinds = kinds
        self.actions = [a for a in ACTIONS if ACTION_KINDS.get(a, "") in kinds | {""}]
        self.weights = [
            w * self.rng.uniform(0.1, 3)
            for a, w in zip(ACTIONS, WEIGHTS, strict=True)
            if a in self.actions
        ]
        self._forge_rng = random.Random(seed * 7919 + 29)
        if "forge" in kinds:
            self.actions.append("forge")
            self.weights.append(FORGE_WEIGHT * self._forge_rng.uniform(0.1, 3))
        self.changes = Changes(self.members, self.checker)
        self.flight: list[Sent] = []
        self.history: list[Sent] = []
        self.runs = itertools.count(1)
        self.ended: dict[int, int] = {}  # a node's process -> the one that replaced it
        # The connections each node's process accepted from each peer, by (sender, receiver):
        # the receiver's process and the sender's processes that dialled it, oldest first (as
        # transport.Transport keeps them: INBOUND_PER_PEER, a newer one replacing the oldest).
        self.accepted: dict[tuple[int, int], tuple[int, list[int]]] = {}
        self.sent = itertools.count()
        # The latest message (by when it was sent) each running node heard from each other
        # node, by (receiver, sender): _check_heard.
        self.heard: dict[tuple[int, int], Sent] = {}
        self.cut: set[tuple[int, int]] = set()
        self.stalled: dict[int, int] = {}  # node -> the step its timers run again
        self.reverted: dict[int, int] = {}  # node -> the nonce of the storage rolled back
        # A targeted delay: messages of this kind are seldom delivered, so they arrive late.
        slow = "delay" in kinds and self.rng.random() < 0.5
        self.slow_kind = self.rng.choice(MESSAGE_KINDS) if slow else None
        self.step = 0
        self.nodes = {i: _Node() for i in self.members}
        self.requests = [
            Request(f"r{k}", client_value(self.rng, f"r{k}", self.rng.random() < 0.5))
            for k in range(requests)
        ]
        # The chunks workload's requests, drawn apart (so the others stay as they were), and
        # each chunked object's request ids (its chunks', then its manifest's) by each of them.
        self.chunked: list[Request] = []
        self.parts: dict[str, list[str]] = {}
        self._chunks_rng = random.Random(seed * 7919 + 17)
        if "chunks" in kinds:
            self._chunked_clients(self._chunks_rng)
        for request in self.requests + self.chunked:
            self.checker.submit(request.request_id, request.value)
        for i in self.members:
            self._start(i)

    def _chunked_clients(self, rng: random.Random) -> None:
        """Requests of tallies over the value limit (world.chunked_requests)."""
        for k in range(CHUNKED):
            requests = chunked_requests(rng, f"c{k}")[0]
            self.chunked += requests
            ids = [r.request_id for r in requests]
            self.parts |= dict.fromkeys(ids, ids)

    def run(self) -> RunResult:
        done = 0
        for done in range(1, self.steps + 1):
            self.step = done
            action = self.rng.choices(self.actions, self.weights)[0]
            try:
                self._hear_founders()
                getattr(self, f"_{action}")()
            except Exception as exc:
                self.checker.fail(f"crash: the core raised {exc!r} at {action}")
            if self.checker.violations:
                break
        return self._result(done)

    def _result(self, steps: int) -> RunResult:
        commits = sum(1 for rid in self.checker.acked if not self.changes.is_change(rid))
        self.changes.current()  # counts the changes that took effect
        return RunResult(
            self.seed,
            steps,
            commits,
            self.faults,
            self.checker.violations,
            self.trace,
            self.changes.took_effect,
        )

    # -- nodes -------------------------------------------------------------------------------

    def _start(self, i: int, members: tuple[int, ...] | None = None) -> None:
        """Start node i from its disk, with the founding members it is given (the stored ones;
        `members` for a node that has none stored and a configured list that differs)."""
        state = self.nodes[i]
        run = next(self.runs)
        if state.run:
            self.ended[state.run] = run
        state.run = run
        state.hellos = {}
        state.disk.open()
        # What it heard as it ran: its storage keeps some of it, its stamps' own rules say what.
        self.heard = {k: v for k, v in self.heard.items() if k[0] != i}
        state.sightings = state.disk.sightings.copy()
        if why := self._went_back(i):
            state.disk.demote()
            self._log(f"node {i} demoted at start: {why}")
        durable = state.disk.load()
        rng = random.Random(self.rng.getrandbits(64))
        founders = members or self.members
        state.node = self.factory(i, founders, durable, SIM_CONFIG, rng, self.now)
        state.syncing = None
        state.log = self.checker.restored(i, durable.log)
        state.waiting = set(founders) - {i} if state.disk.pristine() else set()
        self._log(f"start node {i} voting={durable.voting} log={len(durable.log)}")

    def _answers(self, i: int, p: int) -> bool:
        """Whether node p answers node i's question (transport.ask_cluster): it runs, and
        the link between them is not cut."""
        peer = self.nodes.get(p)
        return (
            peer is not None
            and peer.node is not None
            and (i, p) not in self.cut
            and (p, i) not in self.cut
        )

    def _hear_founders(self) -> None:
        """Each waiting founding storage asks the founders that have not answered it yet
        (prm.Prm.hear_founders): one that shows the cluster ran before it demotes it."""
        for i, state in list(self.nodes.items()):
            for p in sorted(state.waiting):
                if not self._answers(i, p):
                    continue
                peer = self.nodes[p]
                seen = peer.sightings.seen.get(i)
                assert peer.node is not None
                why = state.disk.behind(p, seen, peer.sightings.retired_of(i))
                if why := why or founded_again(p, peer.node.log.length, seen):
                    self._demote(i, why)
                    break
                state.waiting.discard(p)

    def _went_back(self, i: int) -> str | None:
        """Why node i's storage may not vote with what it holds, as the peers it reaches
        answer it (prm.compare_with_peers); a founding storage that has written nothing
        asks on until every founder answered (_hear_founders)."""
        disk = self.nodes[i].disk
        for p, peer in self.nodes.items():
            if p == i or not self._answers(i, p):
                continue
            seen = peer.sightings.seen.get(i)
            if why := disk.behind(p, seen, peer.sightings.retired_of(i)):
                return why
        return None

    def _demote(self, i: int, why: str) -> None:
        """Node i was shown its storage went back: the PRM makes it forgetful (after the
        commit under way) and ends; it starts again."""
        state = self.nodes[i]
        if state.syncing is not None:
            state.disk.write(state.syncing, state.sightings)
        state.disk.demote()
        self._log(f"node {i} demoted: {why}")
        self._start(i)

    def _flush(self, i: int) -> None:
        """Take the node's next Ready, as a driver does once its last commit is done."""
        state = self.nodes[i]
        assert state.node is not None
        if state.syncing is not None:
            return  # inputs batch into the Ready after this commit
        ready = state.node.ready()
        now, later = by_driver(self.driver, ready)
        if not writes(ready.persist, later, state.disk):
            self._release(i, ready)
            return
        self._release(i, now)
        state.syncing = (ready.persist, later)

    def _release(self, i: int, ready: Ready) -> None:
        state = self.nodes[i]
        for entry in ready.applied:
            self.checker.applied(i, state.log, entry)
        view = self._view(i)
        for dst, msg in ready.messages:
            if (violation := frame_violation(i, dst, msg)) is not None:
                self.checker.fail(violation)
                continue
            sent = self._sent(i, dst, msg, view)
            self.flight.append(sent)
            self.history.append(sent)
        for reply in ready.replies:
            if isinstance(reply.outcome, Committed):
                rid = reply.request_id
                if self.parts.get(rid, [""])[-1] == rid and rid not in self.checker.acked:
                    self.faults["chunks"] += 1  # a chunked object committed
                self.checker.committed(i, reply.request_id, reply.outcome)
                self._log(f"node {i}: {reply.request_id} committed {reply.outcome}")

    def _live(self) -> list[int]:
        """The nodes whose core runs."""
        return [i for i, s in self.nodes.items() if s.node is not None and not s.waiting]

    # -- actions -----------------------------------------------------------------------------

    def _deliver(self) -> None:
        """Any message on a link that is not cut (a cut link holds its messages, as a clogged
        link does, until it heals)."""
        open_ = [
            k
            for k, sent in enumerate(self.flight)
            if (sent.src, sent.dst) not in self.cut
            and (type(sent.msg).__name__ != self.slow_kind or self.rng.random() < 0.05)
        ]
        if not open_:
            return
        self._deliver_one(self.flight.pop(self.rng.choice(open_)))

    def _deliver_one(self, item: Sent) -> bool:
        """Deliver `item`; whether it reached its receiver's process."""
        self._hear_founders()
        src, dst, msg, stamp, view, *_ = item
        target = self.nodes.get(dst)
        node = target.node if target is not None else None
        if target is None or node is None or not self._connected(item, target):
            return False
        target.sightings.saw(src, stamp)
        for other, relayed in view.seen.items():
            if other != dst:
                target.sightings.heard(other, relayed, view.retired.get(other, ()))
        self._check_heard(item)
        if target.waiting:  # its core does not run yet (prm.Prm._deliver)
            return True
        if self.tracing:
            self._log(f"deliver {src}->{dst} {msg}")
        node.receive(src, msg, self.now)
        self._flush(dst)
        return True

    def _connected(self, item: Sent, target: _Node) -> bool:
        """Whether `item` reaches its receiver's process: on a connection it accepted from the
        sender's process, or on a new one whose hello it accepts (which may show the receiver
        that its own storage went back: it is demoted, and hears nothing), unless it is of an
        ended run of its sender and shows writes the storage of the sender's hello accepted
        last no longer holds (stamps.from_ended_run: its connection is dropped)."""
        src, dst, _, stamp, *_ = item
        runs, dialled = self.accepted.get((src, dst), (0, []))
        if runs != target.run:  # its connections ended with its process
            dialled = []
            self.accepted[src, dst] = (target.run, dialled)
        if item.run not in dialled:
            if not self._hello(item, target):
                return False
            dialled.append(item.run)
            del dialled[:-INBOUND_PER_PEER]
        # Every message, as the transport checks every frame. Its stamp's nonce and session
        # are its connection's hello's: a process's storage keeps both while it runs. What the
        # walks cannot check: the rule's nonce half for a peer before sessions (a22bc47: its
        # session is 0, so only the nonce tells a replaced storage's frames). Every simulated
        # storage has sessions, and no two opens share one (disk._sessions), so here a session
        # equal to the latest hello's is of its nonce too.
        if why := from_ended_run(src, *target.hellos[src], stamp):
            # The transport loses the connection's later frames too; here another connection
            # of the ended process (it may have had INBOUND_PER_PEER) may carry them, each
            # judged again: more permissive, as the network may deliver them or not.
            dialled.remove(item.run)
            self._log(f"node {dst} drops node {src}'s message: {why}")
            return False
        return True

    def _hello(self, item: Sent, target: _Node) -> bool:
        """Whether the receiver's process accepts a new connection of `item`'s sender's
        process, by its hello (transport._check_hello); it notes the hello as the latest."""
        src, dst, _, stamp, view, *_ = item
        sender = self.nodes[src]
        # The sender's process dialled every peer's process as they ran (transport._sender):
        # this one's, if they ran at the same time. Its hello showed its storage as the process
        # had it (its own stamp and sessions, and what it saw of the receiver as it sent this
        # at the latest) or, from a process that runs, as it is now.
        hello = (sender.disk.stamp, sender.disk.sessions)
        knows = sender.sightings
        shown = (knows.seen.get(dst), knows.retired_of(dst))
        if item.run != sender.run:
            if self.ended.get(item.run, 0) < target.run:
                return False  # it ended before the receiver's process started (or its machine)
            hello = (stamp, item.sessions)
            shown = (view.seen.get(dst), view.retired.get(dst, ()))
        if why := target.disk.behind(src, *shown):
            self._demote(dst, why)
            return False
        latest = target.hellos.get(src)
        if latest and (why := ended(src, *latest, hello[0])):
            self._log(f"node {dst} drops node {src}'s hello: {why}")
            return False
        if why := target.sightings.refusal(src, *hello):
            self._log(f"node {dst} refuses node {src}: {why}")
            return False
        target.hellos[src] = hello
        return True

    def _view(self, i: int) -> View:
        """What node i relays with a message: what it saw itself since it started."""
        seen = self.nodes[i].sightings
        direct = list(seen.direct)
        return View({p: seen.seen[p] for p in direct}, {p: seen.retired_of(p) for p in direct})

    def _sent(self, src: int, dst: int, msg: Message, view: View) -> Sent:
        disk, run = self.nodes[src].disk, self.nodes[src].run
        return Sent(src, dst, msg, disk.stamp, view, next(self.sent), disk.last, run, disk.sessions)

    def _check_heard(self, item: Sent) -> None:
        """A node that heard a storage make some writes never hears it again without them:
        a node's messages rely on what its storage wrote before it sent them, and the stamps
        (paxmr/stamps.py) are to show a storage that went back to every node that heard it
        since its process started. A storage of another nonce is another storage (a lost
        disk, a demotion: it fences before it votes). A message sent earlier than one heard
        (a late one; a replay is sent anew) is heard only if the storage still held its
        writes when it sent the one heard: else the receiver counts what the storage forgot
        (a promise, a vote), and it had accepted the later run's hello, which shows that
        (the transport's rules on ended runs, stamps.from_ended_run and stamps.ended)."""
        known = self.heard.get((item.dst, item.src))
        if known is not None and known.number > item.number:
            if known.stamp.nonce == item.stamp.nonce and not made(known.last, item.last):
                self.checker.fail(
                    f"node {item.dst} heard a late message of node {item.src}'s storage at"
                    f" {item.stamp} after one sent later at {known.stamp}, whose storage had"
                    " lost writes of it: it counted what the storage forgot"
                )
            return
        self.heard[item.dst, item.src] = item
        if (
            known is not None
            and known.stamp.nonce == item.stamp.nonce
            and not made(item.last, known.last)
        ):
            self.checker.fail(
                f"node {item.dst} heard node {item.src}'s storage at {item.stamp} without"
                f" writes it heard it make (at {known.stamp}): it went back, and no stamp"
                " showed it"
            )

    def _drop(self) -> None:
        if self.flight:
            self.flight.pop(self.rng.randrange(len(self.flight)))
            self.faults["drop"] += 1

    def _replay(self) -> None:
        """Deliver again some earlier message: of the targeted kind, if the walk has one. Its
        sender's process as it is now sends it again (TLS refuses recorded frames replayed on
        a new connection, and a connection's frames in or out of order: only a process can
        send a frame again), so the core hears any old message at any time, as the transport
        could carry it."""
        pool = self.history
        if self.slow_kind is not None:
            pool = [m for m in self.history if type(m.msg).__name__ == self.slow_kind] or pool
        if pool:
            old = self.rng.choice(pool)
            self.flight.append(self._sent(old.src, old.dst, old.msg, self._view(old.src)))
            self.faults["replay"] += 1

    def _timer(self) -> None:
        live = [i for i in self._live() if self.stalled.get(i, 0) <= self.step]
        if not live:
            return
        # Mostly in deadline order, as clocks run; now and then one node's timer out of turn.
        if self.rng.random() < 0.75:
            i = min(live, key=lambda j: self.nodes[j].node.next_deadline())  # type: ignore[union-attr]
        else:
            i = self.rng.choice(live)
        self._fire(i)

    def _fire(self, i: int) -> None:
        """Node i's next timer fires (the clock moves to it)."""
        self._hear_founders()
        node = self.nodes[i].node
        if node is None or self.nodes[i].waiting:
            return
        self.now = max(self.now, node.next_deadline())
        self._log(f"timer node {i}")
        node.on_timer(self.now)
        self._flush(i)

    def _submit(self) -> None:
        live = self._live()
        if not live:
            return
        i = self.rng.choice(live)
        pool = self.requests
        if self.chunked and self._chunks_rng.random() < 0.5:  # its PRM submits them back to back
            pool = [r for r in self.chunked if self._may_submit(r.request_id)] or pool
        request = self.rng.choice(pool)
        node = self.nodes[i].node
        assert node is not None
        self._log(f"submit {request.request_id} to node {i}")
        node.submit(request, self.now)
        self._flush(i)

    def _may_submit(self, rid: str) -> bool:
        """A chunked object's requests go one at a time, as the PRM submits them: a chunk once
        those before it are chosen, its manifest once they all are (prm.Prm.replicate; the PRM
        retries each until it hears it was chosen)."""
        parts = self.parts[rid]
        chosen = {r for r, _ in self.checker.chosen.values()}
        return set(parts[: parts.index(rid)]) <= chosen and (rid == parts[-1] or rid not in chosen)

    def _forge(self) -> None:
        """A peer that holds the cluster key forwards to a leader what no client would
        (world._forge): a value that is not a log object or, now and then, the chunks and
        manifest of an object whose second chunk is empty (they hash to its digest: a reader
        must find that chunk missing, chunks.Parts). Its frames go in flight like any."""
        leaders = [i for i, s in self.nodes.items() if s.node and s.node.role == "leader"]
        if not leaders:
            return
        rng = self._forge_rng
        victim = rng.choice(leaders)
        forger = rng.choice([i for i in self.nodes if i != victim])
        rid = f"forged{self.faults['forge']}"
        self.faults["forge"] += 1
        forged = [(rid, forged_value(rng))]
        if rng.random() < 0.3:
            value = client_value(rng, rid, large=False)
            sha = hashlib.sha256(value).hexdigest()
            manifest = chunks.Manifest(f"{rid}_reduced", sha, sha, 2, len(value))
            first, empty = manifest.chunk_ids()
            forged = [(first, value), (empty, b""), (rid, manifest.encode())]
        view = View({}, {})  # it relays nothing: a hello and its stamp are all it shows
        for request_id, value in forged:
            self.checker.submit(request_id, value)  # valid for the log's purposes: proposed
            msg = Forward(request_id, value)
            sent = self._sent(forger, victim, msg, view)
            self.flight.append(sent)
            self.history.append(sent)
        self._log(f"forge: node {forger} forwards {[r for r, _ in forged]} to node {victim}")

    def _sync(self) -> None:
        """A commit in progress reaches the disk; what waited for it leaves."""
        busy = [i for i, s in self.nodes.items() if s.syncing is not None]
        if not busy:
            return
        self._finish_commit(self.rng.choice(busy))

    def _finish_commit(self, i: int) -> None:
        state = self.nodes[i]
        assert state.syncing is not None
        persist, later = state.syncing
        state.syncing = None
        state.disk.write((persist, later), state.sightings)
        if "restore-old" in self.kinds:
            state.snapshots = [*state.snapshots[-SNAPSHOTS + 1 :], state.disk.copy()]
        self._release(i, later)
        self._flush(i)

    def _ids(self) -> tuple[int, ...]:
        """The nodes that run (the founders, and those that joined)."""
        return tuple(self.nodes)

    def _crash(self) -> None:
        """A process crash: a write under way reaches the disk, its effects die."""
        i = self.rng.choice(self._ids())
        syncing = self.nodes[i].syncing
        if syncing is not None:
            self.nodes[i].disk.write(syncing, self.nodes[i].sightings)
        self.faults["crash"] += 1
        self._log(f"crash and restart node {i}")
        self._start(i)

    def _power(self) -> None:
        """A power cut on a node with a write under way."""
        busy = [i for i, s in self.nodes.items() if s.syncing is not None]
        if busy:
            self._cut_power(self.rng.choice(busy))

    def _cut_power(self, i: int) -> None:
        """Node i loses the write under way and some of those not fsynced; it starts again."""
        lost = self.nodes[i].disk.power_cut(self.rng)
        self.faults["lose-unsynced"] += 1
        self._log(f"power cut on node {i}" + (f": {lost} commits lost" if lost else ""))
        self._start(i)

    def _wipe(self) -> None:
        i = self.rng.choice(self._ids())
        # A lost disk is survivable only while a voting majority keeps its own.
        if self.faults["wipe"] >= MAX_WIPES or not self.changes.survives_wipe(
            i, self._voting(), self._durable()
        ):
            return
        self.faults["wipe"] += 1
        self._log(f"disk lost on node {i}")
        self.nodes[i].disk = MemoryStorage(bootstrap=False)
        self._start(i)

    # -- operator mistakes (MISTAKE_KINDS in faults.py) ---------------------------------

    def _lost_disk(self) -> int | None:
        """A founder whose disk may be lost (as _wipe); None if none may."""
        i = self.rng.choice(self.members)
        lost = self.faults["wipe"] + self.faults["stale-members"] + self.faults["reinit"]
        if lost >= MAX_WIPES or not self.changes.survives_wipe(i, self._voting(), self._durable()):
            return None
        return i

    def _stale(self) -> None:
        """A node's disk is lost and it restarts with a stale configured member list: it has
        no stored identity, so the PRM takes the configured list (services/prm.founders). The
        list lacks some founders, or names a node that is no founder."""
        i = self._lost_disk()
        if i is None:
            return
        others = [m for m in self.members if m != i]
        if self.rng.random() < 0.7:
            kept = self.rng.sample(others, self.rng.randint(1, len(others) - 1))
        else:
            kept = [*others, max(self.members) + 10]  # a node that never joined
        members = tuple(sorted([i, *kept]))
        self.faults["stale-members"] += 1
        self._log(f"disk lost on node {i}; it restarts configured with members {list(members)}")
        self.nodes[i].disk = MemoryStorage(bootstrap=False)
        self._start(i, members)

    def _reinit(self) -> None:
        """`paxmr init --found --cluster-id ID` with the running cluster's own id, on a member
        whose disk was lost (init refuses over an existing prm.db; with another id the
        transport refuses the node's frames). As init does today (services/prm.
        peers_in_a_cluster), it asks the peers it can reach and refuses if one that holds the
        cluster's identity has entries in its log: the node then starts without init, as
        after any lost disk. Otherwise it starts empty, as a founding voter."""
        i = self._lost_disk()
        if i is None:
            return
        self.faults["reinit"] += 1
        asked = [
            p for p in self._ids() if p != i and (i, p) not in self.cut and (p, i) not in self.cut
        ]
        refused = any(
            self.nodes[p].disk.identity and len(self.nodes[p].log.entries) > 0 for p in asked
        )
        self._log(
            f"disk lost on node {i}; paxmr init --found "
            + ("is refused: it starts without init" if refused else "makes it an empty voter")
        )
        self.nodes[i].disk = MemoryStorage(bootstrap=not refused)
        self._start(i)

    def _rollback(self) -> None:
        """A node's storage is rolled back to an earlier durable state (an old prm.db copied
        back, a VM snapshot reverted) and it restarts. Half the time it restarts cut off from
        every other node: none can tell it as it starts, and it campaigns alone (each
        campaign a write) until the links heal (_cut), its write count climbing back."""
        i = self.rng.choice(self._ids())
        state = self.nodes[i]
        # A rollback loses writes as a lost disk does: survivable while a majority of voters
        # keep disks that vote (_wipe), and the peers' stamps show it only then.
        if len(state.snapshots) < 2 or not self.changes.survives_wipe(
            i, self._voting(), self._durable()
        ):
            return
        k = self.rng.randrange(len(state.snapshots) - 1)
        self.faults["restore-old"] += 1
        self._log(f"node {i}'s storage rolled back {len(state.snapshots) - 1 - k} commits")
        state.disk = state.snapshots[k].copy()
        state.snapshots = state.snapshots[: k + 1]
        self.reverted[i] = state.disk.stamp.nonce
        if self.rng.random() < 0.5:
            self.cut = {(i, p) for p in self._ids() if p != i}
            self.cut |= {(p, i) for i, p in self.cut}
            self._log(f"cut {sorted(self.cut)}: node {i} starts alone")
        self._start(i)

    def _voting(self) -> dict[int, bool]:
        """Which nodes' disks vote, for what a majority must keep (members.survives_wipe): a
        storage rolled back that no peer has shown it yet (it still has the snapshot's nonce)
        counts as lost, since it may vote with what it forgot."""
        reverted = {
            i for i, nonce in self.reverted.items() if self.nodes[i].disk.stamp.nonce == nonce
        }
        return {i: s.disk.voting and i not in reverted for i, s in self.nodes.items()}

    def _durable(self) -> int:
        return max(s.disk.length for s in self.nodes.values())

    def _stall(self) -> None:
        i = self.rng.choice(self._ids())
        self.stalled[i] = self.step + self.rng.randint(20, 200)
        self.faults["delay"] += 1
        self._log(f"stall node {i}'s timers until step {self.stalled[i]}")

    def _cut(self) -> None:
        """Heal every cut, or cut a random set of links (each one way)."""
        if self.cut and self.rng.random() < 0.6:
            self.cut.clear()
            self._log("heal links")
            return
        leaders = [i for i, s in self.nodes.items() if s.node and s.node.role == "leader"]
        if leaders and self.rng.random() < 0.5:
            # Isolate a leader with a minority of followers: the rest can elect and choose.
            leader = leaders[0]
            ids = self._ids()
            others = [m for m in ids if m != leader]
            side = [leader, *self.rng.sample(others, (len(ids) - 1) // 2)]
            rest = [m for m in ids if m not in side]
            self.cut = {(a, b) for a in side for b in rest} | {(b, a) for a in side for b in rest}
            if self.rng.random() < 0.5:  # and paused, so it does not notice it lost its quorum
                self.stalled[leader] = self.step + self.rng.randint(20, 200)
        else:
            self.cut = set(cut_links(self.rng, self._ids()))
        self.faults["partition"] += 1
        self._log(f"cut {sorted(self.cut)}")

    def _member(self) -> None:
        """A membership change (members.py): boot the node it needs, ask a node for it."""
        lengths = {i: len(s.log.entries) for i, s in self.nodes.items()}
        nodes = {i: s.node for i, s in self.nodes.items()}
        change = self.changes.plan(self.rng, nodes, self._voting(), lengths, self._durable())
        if change is None:
            return
        if change.boot is not None:
            # A new machine (or a founder's id on a new one): its old process and disk are gone.
            self.nodes[change.boot] = _Node(MemoryStorage(bootstrap=False))
            self._start(change.boot)
        node = self.nodes[change.at].node
        assert node is not None
        self.faults["member"] += 1
        self._log(
            f"member {change.operation}: ask node {change.at} for voters {change.voters}"
            f" learners {change.learners}"
        )
        self.changes.propose(change, node, self.now)
        self._flush(change.at)
