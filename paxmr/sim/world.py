"""One simulated cluster: nodes, their disks, a faulty network and clients, on a virtual clock.

The nodes are the production core (paxmr.paxos.Node); a Ready is carried out through
paxos.split as the PRM does, and applied entries go through the PRM's own Catalog.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from paxmr import chunks, tallyvalue
from paxmr.paxos import (
    CHUNK_PREFIX,
    Committed,
    CoreConfig,
    Node,
    Ready,
    Reply,
    Request,
    reports_applied_length,
    split,
    to_wire,
)
from paxmr.paxos.messages import Accept, CatchupReply, Forward, Promise
from paxmr.sim.checker import NodeLog
from paxmr.sim.disk import MemoryStorage
from paxmr.sim.faults import MAX_DELAY, WORKLOAD_KINDS, NetworkProfile, NodeFault, plan_faults
from paxmr.sim.members import Changes
from paxmr.sim.simulation import DRIVERS as DRIVERS  # noqa: PLC0414 - importers of world
from paxmr.sim.simulation import EARLY as EARLY  # noqa: PLC0414
from paxmr.sim.simulation import STRICT as STRICT  # noqa: PLC0414
from paxmr.sim.simulation import UNSAFE as UNSAFE  # noqa: PLC0414
from paxmr.sim.simulation import NodeFactory as NodeFactory  # noqa: PLC0414
from paxmr.sim.simulation import Simulation

if TYPE_CHECKING:
    from paxmr.paxos import Message, Persist

# The deployment's proportions, scaled down: a frame holds four of the largest values, and a
# batch leaves room in a frame for one more entry and the framing (paxmr.settings.Limits).
MAX_VALUE = 2048
FRAME_BYTES = 4 * MAX_VALUE
SIM_CONFIG = CoreConfig(
    heartbeat_interval=0.05,
    election_timeout_min=0.15,
    election_timeout_max=0.3,
    max_value_bytes=MAX_VALUE,
    max_in_flight=64,
    catchup_batch=8,
    batch_bytes=FRAME_BYTES - MAX_VALUE,
    request_timeout=1.0,
)
FAULT_PHASE = 3.0  # faults strike in [0, FAULT_PHASE); then everything heals
LIVENESS_BOUND = 20.0  # after healing, all requests must complete and logs converge by then
REQUESTS = 40
_FRAMING = 64  # the transport's length prefix, sequence number and envelope, at most
_HISTORY = 4096  # messages kept for replays


@dataclass
class Replica:
    id: int
    disk: MemoryStorage
    node: Node | None = None
    log: NodeLog = field(default_factory=NodeLog)
    syncing: tuple[Persist, Ready] | None = None  # the commit in progress, what waits for it
    incarnation: int = 0
    timer_token: int = 0
    timer_at: float = math.inf
    power_cut_armed: bool = False  # lose-unsynced strikes while writes are in flight
    wipe_armed: bool = False  # a lost disk strikes right after the node's next commit


@dataclass
class Client:
    request: Request
    done: bool = False
    waiting_on: tuple[int, int] | None = None  # (node, incarnation) of the outstanding attempt
    then: list[Request] = field(default_factory=list)  # a chunked one's requests after this


@dataclass
class RunResult:
    seed: int
    steps: int
    commits: int
    faults: Counter[str]
    violations: list[str]
    trace: list[str]
    changes: Counter[str] = field(default_factory=Counter)  # membership changes that took effect


def client_value(rng: random.Random, rid: str, large: bool) -> bytes:
    """A real log object of a size up to MAX_VALUE, unique to its request, encoded as the PRM
    encodes a tally file (tallyvalue.py)."""
    target = rng.randint(MAX_VALUE // 2, MAX_VALUE) if large else rng.randint(60, 400)
    word = rid.encode() + b"-" + b"w" * max(1, target - 160)
    return tallyvalue.encode_counts(f"{rid}_reduced", 1, rid, [(word, 1)])[0]


CHUNKED = 2  # chunked clients per run with the chunks workload


def chunked_requests(rng: random.Random, rid: str) -> tuple[list[Request], dict[str, Any]]:
    """A log object over MAX_VALUE as the PRM replicates it: its chunks, then its manifest
    (paxmr/chunks.py); and the summary it shows once applied."""
    words = [(b"%s-%05d-" % (rid.encode(), i) + b"c" * 40, 1 + i % 5) for i in range(120)]
    rng.shuffle(words)
    file = f"{rid}_reduced"
    value, encoded = tallyvalue.encode_counts(file, 1, rid, sorted(words[: rng.randint(60, 120)]))
    manifest, parts = chunks.split(value, file, encoded.digest, MAX_VALUE)
    requests = [Request(c, p) for c, p in zip(manifest.chunk_ids(), parts, strict=True)]
    return [*requests, Request(rid, manifest.encode())], encoded.summary


def forged_value(rng: random.Random) -> bytes:
    """What a peer holding the cluster key could forward: anything but a log object."""
    body = {
        "v": 1,
        "file": "x",
        "node": 9,
        "rid": "x",
        "words": [b"a"],
        "counts": [1],
        "digest": "",
    }
    body |= rng.choice(
        [
            {"words": [1]},  # decoded once, then the digest step raised (issue 8, defect 4)
            {"counts": ["1"]},
            {"v": 7},
            {"words": [b"b", b"a"], "counts": [1, 1]},
            {"digest": "0" * 64},
        ]
    )
    if rng.random() < 0.2:
        return rng.randbytes(rng.randint(0, 64))
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def by_driver(driver: str, ready: Ready) -> tuple[Ready, Ready]:
    """(what leaves before the commit of ready.persist, what waits for it)."""
    if driver == STRICT:
        return Ready(), ready
    if driver == EARLY:
        return split(ready)
    return ready, Ready()  # UNSAFE: effects go out before the disk has them


def writes(persist: Persist, held: Ready, disk: MemoryStorage) -> bool:
    """Whether a driver commits before it releases `held` (prm._carry_out): a persist, or a
    Promise while some of the log is not fsynced (Persist.needs_fsync)."""
    return bool(persist) or (disk.unsynced and reports_applied_length(held))


def frame_violation(src: int, dst: int, msg: Message) -> str | None:
    """The transport drops a frame over its limit; a core that sends one has a bug."""
    if not isinstance(msg, Promise | Accept | CatchupReply | Forward):
        return None  # no values: a few hundred bytes at most
    size = len(msgpack.packb(to_wire(msg), use_bin_type=True)) + _FRAMING
    if size <= FRAME_BYTES:
        return None
    return (
        f"frame: node {src} sent node {dst} a {type(msg).__name__} of {size} bytes,"
        f" over the {FRAME_BYTES}-byte frame limit"
    )


class World(Simulation):
    def __init__(  # noqa: PLR0917 - one simulated run's parameters
        self,
        seed: int,
        size: int,
        kinds: frozenset[str],
        node_factory: NodeFactory = Node,
        driver: str = EARLY,
        trace: bool = False,
    ) -> None:
        super().__init__(seed, size, node_factory, driver, trace)
        self.steps = 0
        self.changes = Changes(self.members, self.checker)
        self.events: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.healed = False
        self.blocked: Counter[tuple[int, int]] = Counter()  # (src, dst) -> cuts holding it
        self.clogged: dict[tuple[int, int], list[Message]] = {}  # held until the link unclogs
        self.history: list[tuple[int, int, Message]] = []
        # With membership changes, faults strike the nodes that may join, too (once booted).
        ids = (*self.members, *self.changes.spares) if "member" in kinds else self.members
        workloads = kinds & set(WORKLOAD_KINDS)  # they draw nothing from the fault plan
        self.profile, plan = plan_faults(self.rng, kinds - workloads, ids, FAULT_PHASE)
        self.replicas = {i: Replica(i, MemoryStorage(bootstrap=True)) for i in self.members}
        for replica in self.replicas.values():
            self._start(replica)
        for fault in plan:
            self._at(fault.at, "fault", fault)
        self.clients: dict[str, Client] = {}
        large = self.rng.random() < 0.5
        for k in range(REQUESTS):
            rid = f"r{k}"
            request = Request(rid, client_value(self.rng, rid, large and self.rng.random() < 0.7))
            self.clients[rid] = Client(request)
            self.checker.submit(rid, request.value)
            self._at(self.rng.uniform(0, FAULT_PHASE), "client", rid)
        if "chunks" in workloads:
            self._chunked_clients(random.Random(seed * 7919 + 17))
        self._at(FAULT_PHASE, "heal", None)

    def _chunked_clients(self, rng: random.Random) -> None:
        """Clients that replicate a log object over the value limit (chunks.py); a seeded
        generator of their own, so that the other clients' values stay as they were."""
        for k in range(CHUNKED):
            rid = f"c{k}"
            requests, shown = chunked_requests(rng, rid)
            client = Client(requests[0], then=requests[1:])
            for request in requests:
                self.clients[request.request_id] = client
                self.checker.submit(request.request_id, request.value)
            self.checker.objects[rid] = shown
            self._at(rng.uniform(0, FAULT_PHASE), "client", requests[0].request_id)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        deadline = FAULT_PHASE + LIVENESS_BOUND
        while self.events:
            at, _, kind, arg = heapq.heappop(self.events)
            if at > deadline:
                break
            self.now = at
            self.steps += 1
            try:
                getattr(self, f"_on_{kind}")(arg)
            except Exception as exc:
                self.checker.fail(f"crash: the core raised {exc!r} handling {kind} {arg!r:.200}")
            if self.checker.violations or (kind == "quiet" and self._quiescent()):
                break
        if not self.checker.violations:
            if self._quiescent():
                self.checker.final({i: r.log for i, r in self.replicas.items()})
            else:
                self._report_stuck()
        commits = sum(
            1
            for rid in self.checker.acked
            if not self.changes.is_change(rid) and not rid.startswith(CHUNK_PREFIX)
        )
        self.changes.current()  # counts the changes that took effect
        return RunResult(
            self.seed,
            self.steps,
            commits,
            self.faults,
            self.checker.violations,
            self.trace,
            self.changes.took_effect,
        )

    def _at(self, at: float, kind: str, arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self.events, (at, self._seq, kind, arg))

    def _quiescent(self) -> bool:
        if not self.healed or not all(c.done for c in self.clients.values()):
            return False
        replicas = self.replicas.values()
        if not all(r.node is not None for r in replicas):
            return False
        # A voter that lost its disk (or joined) must vote by quiescence, too.
        voters = self.changes.current().voters
        if not all(r.node is not None and r.node.acceptor.voting for r in self._voters(voters)):
            return False
        return len({len(r.log.entries) for r in replicas}) == 1

    def _voters(self, voters: frozenset[int]) -> list[Replica]:
        return [r for i, r in self.replicas.items() if i in voters]

    def _report_stuck(self) -> None:
        pending = sorted(rid for rid, c in self.clients.items() if not c.done)
        lengths = {i: len(r.log.entries) for i, r in self.replicas.items()}
        mute = [i for i, r in self.replicas.items() if r.node is None or not r.node.acceptor.voting]
        current = self.changes.current()
        self.checker.fail(
            f"liveness: {LIVENESS_BOUND}s after healing, pending {pending}, log lengths {lengths},"
            f" not voting {mute}, voters {sorted(current.voters)} (epoch {current.epoch})"
        )

    # -- nodes and their disks -------------------------------------------------------------

    def _start(self, replica: Replica) -> None:
        durable = replica.disk.load()
        rng = random.Random(self.rng.getrandbits(64))
        replica.node = self.factory(replica.id, self.members, durable, SIM_CONFIG, rng, self.now)
        replica.log = self.checker.restored(replica.id, durable.log)
        self._log(f"start node {replica.id} voting={durable.voting} log={len(durable.log)}")
        self._after_input(replica)

    def _crash(self, replica: Replica, *, lose_unsynced: bool) -> None:
        if lose_unsynced:  # a power cut: the write under way and some not fsynced are lost
            if lost := replica.disk.power_cut(self.rng):
                self._log(f"node {replica.id} lost {lost} commits that were not fsynced")
        elif replica.syncing is not None:
            replica.disk.write(replica.syncing)  # the write reached the disk; its effects died
        replica.syncing = None
        replica.node = None
        replica.incarnation += 1
        for rid, client in self.clients.items():
            if client.waiting_on == (replica.id, replica.incarnation - 1):
                client.waiting_on = None
                self._at(self.now + self.rng.uniform(0.05, 0.3), "client", rid)

    def _after_input(self, replica: Replica) -> None:
        node = replica.node
        assert node is not None
        if replica.syncing is None:  # a driver takes the next Ready once the last is on disk
            self._take_ready(replica)
            if replica.node is None:
                return
        deadline = node.next_deadline()
        if deadline != replica.timer_at and deadline < math.inf:
            replica.timer_token += 1
            replica.timer_at = deadline
            self._at(deadline, "timer", (replica.id, replica.timer_token))

    def _take_ready(self, replica: Replica) -> None:
        assert replica.node is not None
        ready = replica.node.ready()
        now, later = by_driver(self.driver, ready)
        if not writes(ready.persist, later, replica.disk):
            self._release(replica, ready)
            return
        self._release(replica, now)
        replica.syncing = (ready.persist, later)
        self._at(
            self.now + self.rng.uniform(0.0002, 0.003), "sync", (replica.id, replica.incarnation)
        )
        if replica.power_cut_armed:
            replica.power_cut_armed = False
            self.faults["lose-unsynced"] += 1
            self._log(f"power cut on node {replica.id}")
            self._crash(replica, lose_unsynced=True)

    def _on_sync(self, arg: tuple[int, int]) -> None:
        replica = self.replicas[arg[0]]
        if replica.incarnation != arg[1] or replica.syncing is None:
            return
        persist, later = replica.syncing
        replica.syncing = None
        replica.disk.write((persist, later))
        self._release(replica, later)
        if replica.wipe_armed:
            replica.wipe_armed = False
            # Survivable while a majority of the others still votes; recoveries may overlap.
            if self.changes.survives_wipe(replica.id, self._voting(), self._durable()):
                self.faults["wipe"] += 1
                self._log(f"disk lost on node {replica.id}")
                self._crash(replica, lose_unsynced=True)
                replica.disk = MemoryStorage(bootstrap=False)
                return
        if replica.node is not None:
            self._after_input(replica)

    def _voting(self) -> dict[int, bool]:
        return {i: r.disk.voting for i, r in self.replicas.items()}

    def _durable(self) -> int:
        return max(r.disk.length for r in self.replicas.values())

    def _release(self, replica: Replica, ready: Ready) -> None:
        for entry in ready.applied:
            self.checker.applied(replica.id, replica.log, entry)
        for dst, msg in ready.messages:
            self._send(replica.id, dst, msg)
        for reply in ready.replies:
            if self.changes.is_change(reply.request_id):
                self._changed(replica, reply)
                continue
            client = self.clients.get(reply.request_id)
            if client is None or client.done or reply.request_id != client.request.request_id:
                continue  # (a chunked client's earlier chunk: answered before)
            client.waiting_on = None
            if isinstance(reply.outcome, Committed) and client.then:
                # A chunk is in: the next one, or the manifest (the PRM's _replicate_chunks).
                self.checker.committed(replica.id, reply.request_id, reply.outcome)
                client.request = client.then.pop(0)
                self._at(self.now, "client", client.request.request_id)
            elif isinstance(reply.outcome, Committed):
                client.done = True
                if reply.request_id in self.checker.objects:
                    self.faults["chunks"] += 1  # a chunked object committed
                self.checker.committed(replica.id, reply.request_id, reply.outcome)
                self._log(f"client {reply.request_id} committed {reply.outcome}")
            else:
                self._log(f"client {reply.request_id} refused {reply.outcome.code}")
                self._at(self.now + self.rng.uniform(0.05, 0.3), "client", reply.request_id)

    def _on_timer(self, arg: tuple[int, int]) -> None:
        replica = self.replicas[arg[0]]
        if replica.node is None or replica.timer_token != arg[1]:
            return
        replica.timer_at = math.inf
        replica.node.on_timer(self.now)
        self._after_input(replica)

    # -- network ---------------------------------------------------------------------------

    def _fits(self, src: int, dst: int, msg: Message) -> bool:
        violation = frame_violation(src, dst, msg)
        if violation is not None:
            self.checker.fail(violation)
        return violation is None

    def _send(self, src: int, dst: int, msg: Message) -> None:
        if not self._fits(src, dst, msg):
            return
        if not self.healed:
            self._remember(src, dst, msg)
        if self.blocked[src, dst]:
            return
        held = self.clogged.get((src, dst))
        if held is not None:
            held.append(msg)
            return
        latencies = self._latencies(msg)
        if self.tracing and not latencies:
            self._log(f"drop {src}->{dst} {msg}")
        for latency in latencies:
            self._at(self.now + latency, "deliver", (src, dst, msg))

    def _latencies(self, msg: Message) -> list[float]:
        """When each copy of a message arrives: none if lost, two if duplicated."""
        profile, rng = self.profile, self.rng
        latencies: list[float] = []
        if rng.random() < profile.drop:
            self.faults["drop"] += 1
            return latencies
        copies = 1
        if rng.random() < profile.dup:
            self.faults["dup"] += 1
            copies = 2
        for _ in range(copies):
            latency = rng.uniform(0.0005, 0.002)
            if rng.random() < profile.reorder:
                self.faults["reorder"] += 1
                latency += rng.uniform(0, 0.02)
            slow = profile.slow_kind == type(msg).__name__ and rng.random() < profile.slow
            if slow or rng.random() < profile.delay:
                self.faults["delay"] += 1
                latency += rng.uniform(0.05, MAX_DELAY)
            latencies.append(latency)
        return latencies

    def _remember(self, src: int, dst: int, msg: Message) -> None:
        """Keep a sample of what was sent; now and then deliver one of them again, late."""
        rng = self.rng
        if len(self.history) < _HISTORY:
            self.history.append((src, dst, msg))
        else:
            self.history[rng.randrange(_HISTORY)] = (src, dst, msg)
        if rng.random() < self.profile.replay:
            self.faults["replay"] += 1
            old = rng.choice(self.history)
            self._at(self.now + rng.uniform(0.0005, MAX_DELAY), "deliver", old)

    def _on_deliver(self, arg: tuple[int, int, Message]) -> None:
        src, dst, msg = arg
        replica = self.replicas.get(dst)
        if replica is None or replica.node is None or self.blocked[src, dst]:
            return
        if self.tracing:
            self._log(f"deliver {src}->{dst} {msg}")
        replica.node.receive(src, msg, self.now)
        self._after_input(replica)

    # -- clients ---------------------------------------------------------------------------

    def _on_client(self, rid: str) -> None:
        client = self.clients[rid]
        if client.done or client.waiting_on is not None:
            return
        # Clients know the members the log names (a node that was removed would forward to
        # no one; a client that asked it would only wait for its deadline).
        members = self.changes.current().members
        choices = self.members if members == frozenset(self.members) else sorted(members)
        replica = self.replicas[self.rng.choice(choices)]
        if replica.node is None:  # connection refused: try again shortly
            self._at(self.now + self.rng.uniform(0.05, 0.3), "client", rid)
            return
        self._log(f"client {rid} submits to node {replica.id}")
        client.waiting_on = (replica.id, replica.incarnation)
        replica.node.submit(client.request, self.now)
        self._after_input(replica)

    # -- faults ----------------------------------------------------------------------------

    def _on_fault(self, fault: NodeFault) -> None:
        if self.healed:
            return
        if fault.kind == "clog":
            self._clog(fault)
        elif fault.kind == "partition":
            self.blocked.update(fault.cut)
            self.faults["partition"] += 1
            self._log(f"fault partition {sorted(fault.cut)} for {fault.duration:.3f}s")
            self._at(self.now + fault.duration, "recover", fault)
        elif fault.kind == "forge":
            self._forge(fault.nodes[1])
        elif fault.kind == "member":
            self._change()
        else:
            self._node_fault(fault)

    def _clog(self, fault: NodeFault) -> None:
        link = next(iter(fault.cut))
        if link not in self.clogged:
            self.clogged[link] = []
            self.faults["clog"] += 1
            self._log(f"clog {link} for {fault.duration:.3f}s")
            self._at(self.now + fault.duration, "unclog", link)

    def _node_fault(self, fault: NodeFault) -> None:
        victim = self.replicas.get(fault.nodes[0])
        if victim is None or victim.node is None:
            return
        if fault.kind == "stop":
            victim.node.stop(self.now)
            self._after_input(victim)
        elif fault.kind == "wipe":
            victim.wipe_armed = True
        elif fault.kind == "lose-unsynced":
            for i in fault.nodes:
                if i in self.replicas:
                    self.replicas[i].power_cut_armed = True
        else:
            self._crash(victim, lose_unsynced=False)
        if fault.kind not in {"lose-unsynced", "wipe"}:  # counted when they strike
            self.faults[fault.kind] += 1
        self._log(f"fault {fault.kind} {fault.nodes} for {fault.duration:.3f}s")
        self._at(self.now + fault.duration, "recover", fault)

    def _forge(self, forger: int) -> None:
        """The forger sends its value where it gets proposed: to a leader, if there is one."""
        leaders = [r for r in self.replicas.values() if r.node and r.node.role == "leader"]
        victim = next((r for r in leaders if r.id != forger), None)
        if victim is None or victim.node is None:
            return
        rid = f"forged{self.faults['forge']}"
        value = forged_value(self.rng)
        self.faults["forge"] += 1
        self.checker.submit(rid, value)  # valid for the log's purposes: a peer proposed it
        self._log(f"forge: node {forger} forwards {value!r} to node {victim.id}")
        victim.node.receive(forger, Forward(rid, value), self.now)
        self._after_input(victim)

    def _on_unclog(self, link: tuple[int, int]) -> None:
        held = self.clogged.pop(link, None)
        if held:
            self._log(f"unclog {link}: {len(held)} held messages")
        for k, msg in enumerate(held or ()):
            self._at(self.now + 0.0001 * (k + 1), "deliver", (*link, msg))

    def _on_recover(self, fault: NodeFault) -> None:
        if self.healed:
            return
        if fault.kind == "partition":
            self.blocked.subtract(fault.cut)  # links heal one cut at a time
            self._log(f"recover partition {sorted(fault.cut)}")
            return
        for i in fault.nodes:
            victim = self.replicas.get(i)
            if victim is None:
                continue
            if victim.node is None:
                self._start(victim)
            elif fault.kind in {"lose-unsynced", "wipe"}:
                victim.power_cut_armed = victim.wipe_armed = False
            elif fault.kind == "stop" and victim.node.stopped:
                victim.node.resume(self.now)
                self._after_input(victim)
        self._log(f"recover {fault.kind} {fault.nodes}")

    def _on_heal(self, _: None) -> None:
        self.healed = True
        self.profile = NetworkProfile()
        self.blocked.clear()
        for link in list(self.clogged):
            self._on_unclog(link)
        for replica in self.replicas.values():
            replica.power_cut_armed = replica.wipe_armed = False
            if replica.node is None:
                self._start(replica)
            elif replica.node.stopped:
                replica.node.resume(self.now)
                self._after_input(replica)
        self._log("heal")
        t = self.now
        while t < self.now + LIVENESS_BOUND:
            t += 0.25
            self._at(t, "quiet", None)

    def _on_quiet(self, _: None) -> None:
        """A checkpoint: the loop stops here once the cluster is quiescent."""

    # -- membership changes (members.py) ---------------------------------------------------

    def _change(self) -> None:
        nodes = {i: r.node for i, r in self.replicas.items()}
        lengths = {i: len(r.log.entries) for i, r in self.replicas.items()}
        change = self.changes.plan(self.rng, nodes, self._voting(), lengths, self._durable())
        if change is None:
            return
        if change.boot is not None:
            # A new machine (or a founder's id on a new one): its old process and disk are gone.
            replica = self.replicas.setdefault(change.boot, Replica(change.boot, MemoryStorage()))
            if replica.node is not None:
                self._crash(replica, lose_unsynced=True)
            replica.disk = MemoryStorage(bootstrap=False)
            replica.power_cut_armed = replica.wipe_armed = False
            self._start(replica)
        asked = self.replicas[change.at]
        if asked.node is None:
            return
        self.faults["member"] += 1
        self._log(
            f"member {change.operation}: ask node {change.at} for voters {change.voters}"
            f" learners {change.learners}"
        )
        self.changes.propose(change, asked.node, self.now)
        self._after_input(asked)
        if change.boot is not None:  # an operator promotes a node that joined once it caught up
            follow_up = NodeFault(self.now + self.rng.uniform(0.2, 1.0), "member", (), 0.0)
            self._at(follow_up.at, "fault", follow_up)

    def _changed(self, replica: Replica, reply: Reply) -> None:
        if isinstance(reply.outcome, Committed):
            self.checker.committed(replica.id, reply.request_id, reply.outcome)
        self._log(f"change {reply.request_id!r} at node {replica.id}: {reply.outcome}")
