"""One simulated cluster: nodes, their disks, a faulty network and clients, on a virtual clock."""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from paxmr.paxos import Committed, CoreConfig, Node, Ready, Request
from paxmr.paxos.ready import AFTER_COMMIT
from paxmr.sim.checker import Checker, NodeLog
from paxmr.sim.disk import MemoryStorage
from paxmr.sim.faults import NetworkProfile, NodeFault, plan_faults

if TYPE_CHECKING:
    from collections.abc import Sequence

    from paxmr.paxos import DurableState, Message, Persist

SIM_CONFIG = CoreConfig(
    heartbeat_interval=0.05,
    election_timeout_min=0.15,
    election_timeout_max=0.3,
    max_value_bytes=1024,
    max_in_flight=64,
    catchup_batch=8,
    request_timeout=1.0,
)
FAULT_PHASE = 3.0  # faults strike in [0, FAULT_PHASE); then everything heals
LIVENESS_BOUND = 20.0  # after healing, all requests must complete and logs converge by then
REQUESTS = 40

# How a driver orders a Ready's effects around the commit of its persist.
STRICT = "strict"  # everything waits for the commit: the contract documented in paxmr.paxos
EARLY = "early"  # only Prepare and acceptor replies wait (paxmr.services.prm does this)
UNSAFE = "unsafe"  # nothing waits: deliberately broken, to show the checker catches it
DRIVERS = (STRICT, EARLY, UNSAFE)


class NodeFactory(Protocol):
    def __call__(  # noqa: PLR0917 - mirrors Node's constructor
        self,
        node_id: int,
        members: Sequence[int],
        durable: DurableState,
        config: CoreConfig,
        rng: random.Random,
        now: float,
    ) -> Node: ...


@dataclass
class Replica:
    id: int
    disk: MemoryStorage
    node: Node | None = None
    log: NodeLog = field(default_factory=lambda: NodeLog([]))
    syncing: tuple[Persist, Ready] | None = None  # the commit in progress, what waits for it
    incarnation: int = 0
    timer_token: int = 0
    timer_at: float = math.inf
    power_cut_armed: bool = False  # lose-unsynced strikes while writes are in flight
    wipe_armed: bool = False  # a lost disk strikes right after the node acknowledged an accept


@dataclass
class Client:
    request: Request
    done: bool = False
    waiting_on: tuple[int, int] | None = None  # (node, incarnation) of the outstanding attempt


@dataclass
class RunResult:
    seed: int
    steps: int
    commits: int
    faults: Counter[str]
    violations: list[str]
    trace: list[str]


class World:
    def __init__(  # noqa: PLR0917 - one simulated run's parameters
        self,
        seed: int,
        size: int,
        kinds: frozenset[str],
        node_factory: NodeFactory = Node,
        driver: str = EARLY,
        trace: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.members = tuple(range(1, size + 1))
        self.factory = node_factory
        self.driver = driver
        self.tracing = trace
        self.trace: list[str] = []
        self.now = 0.0
        self.steps = 0
        self.faults: Counter[str] = Counter()
        self.checker = Checker()
        self.events: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.healed = False
        self.blocked: set[tuple[int, int]] = set()
        self.profile, plan = plan_faults(self.rng, kinds, self.members, FAULT_PHASE)
        self.replicas = {i: Replica(i, MemoryStorage(bootstrap=True)) for i in self.members}
        for replica in self.replicas.values():
            self._start(replica)
        for fault in plan:
            self._at(fault.at, "fault", fault)
        self.clients: dict[str, Client] = {}
        for k in range(REQUESTS):
            request = Request(f"r{k}", f"value {k} of seed {seed}".encode())
            self.clients[request.request_id] = Client(request)
            self.checker.submit(request.request_id, request.value)
            self._at(self.rng.uniform(0, FAULT_PHASE), "client", request.request_id)
        self._at(FAULT_PHASE, "heal", None)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        deadline = FAULT_PHASE + LIVENESS_BOUND
        while self.events:
            at, _, kind, arg = heapq.heappop(self.events)
            if at > deadline:
                break
            self.now = at
            self.steps += 1
            getattr(self, f"_on_{kind}")(arg)
            if self.checker.violations or (kind == "quiet" and self._quiescent()):
                break
        if not self.checker.violations:
            if self._quiescent():
                self.checker.final({i: r.log for i, r in self.replicas.items()})
            else:
                self._report_stuck()
        commits = len(self.checker.acked)
        return RunResult(
            self.seed, self.steps, commits, self.faults, self.checker.violations, self.trace
        )

    def _at(self, at: float, kind: str, arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self.events, (at, self._seq, kind, arg))

    def _log(self, text: str) -> None:
        if self.tracing:
            self.trace.append(f"{self.now:9.4f} {text}")

    def _quiescent(self) -> bool:
        if not self.healed or not all(c.done for c in self.clients.values()):
            return False
        replicas = self.replicas.values()
        # A replica that lost its disk must have recovered its vote by quiescence, too.
        if not all(r.node is not None and r.node.acceptor.voting for r in replicas):
            return False
        return len({len(r.log.entries) for r in replicas}) == 1

    def _report_stuck(self) -> None:
        pending = sorted(rid for rid, c in self.clients.items() if not c.done)
        lengths = {i: len(r.log.entries) for i, r in self.replicas.items()}
        mute = [i for i, r in self.replicas.items() if r.node is None or not r.node.acceptor.voting]
        self.checker.fail(
            f"liveness: {LIVENESS_BOUND}s after healing, pending {pending}, log lengths {lengths},"
            f" not voting {mute}"
        )

    # -- nodes and their disks -------------------------------------------------------------

    def _start(self, replica: Replica) -> None:
        durable = replica.disk.load()
        rng = random.Random(self.rng.getrandbits(64))
        replica.node = self.factory(replica.id, self.members, durable, SIM_CONFIG, rng, self.now)
        replica.log = NodeLog([])
        for entry in durable.log:
            self.checker.learned(replica.id, entry)
            replica.log.append(entry)
        self._log(f"start node {replica.id} voting={durable.voting} log={len(durable.log)}")
        self._after_input(replica)

    def _crash(self, replica: Replica, *, lose_unsynced: bool) -> None:
        if replica.syncing is not None and not lose_unsynced:
            replica.disk.commit(replica.syncing[0])  # the write reached the disk; its effects died
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
        if not ready.persist:
            self._release(replica, ready)
            return
        if self.driver == STRICT:
            now, later = Ready(), ready
        elif self.driver == EARLY:
            held: list[tuple[int, Message]] = []
            sent: list[tuple[int, Message]] = []
            for dst, msg in ready.messages:
                (held if isinstance(msg, AFTER_COMMIT) else sent).append((dst, msg))
            now = Ready(messages=sent, replies=ready.replies, applied=ready.applied)
            later = Ready(messages=held)
        else:  # UNSAFE: effects go out before the disk has them
            now, later = ready, Ready()
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
        replica.disk.commit(persist)
        self._release(replica, later)
        if replica.wipe_armed and persist.accepted:
            replica.wipe_armed = False
            # A lost disk is survivable only while every other replica still votes.
            if all(r.disk.voting for r in self.replicas.values()):
                self.faults["wipe"] += 1
                self._log(f"disk lost on node {replica.id}")
                self._crash(replica, lose_unsynced=True)
                replica.disk = MemoryStorage(bootstrap=False)
                return
        if replica.node is not None:
            self._after_input(replica)

    def _release(self, replica: Replica, ready: Ready) -> None:
        for entry in ready.applied:
            self.checker.applied(replica.id, replica.log, entry)
        for dst, msg in ready.messages:
            self._send(replica.id, dst, msg)
        for reply in ready.replies:
            client = self.clients.get(reply.request_id)
            if client is None or client.done:
                continue
            client.waiting_on = None
            if isinstance(reply.outcome, Committed):
                client.done = True
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

    def _send(self, src: int, dst: int, msg: Message) -> None:
        profile = self.profile
        rng = self.rng
        if (src, dst) in self.blocked:
            return
        if rng.random() < profile.drop:
            self.faults["drop"] += 1
            self._log(f"drop {src}->{dst} {msg}")
            return
        copies = 1
        if rng.random() < profile.dup:
            self.faults["dup"] += 1
            copies = 2
        for _ in range(copies):
            latency = rng.uniform(0.0005, 0.002)
            if rng.random() < profile.reorder:
                self.faults["reorder"] += 1
                latency += rng.uniform(0, 0.02)
            if rng.random() < profile.delay:
                self.faults["delay"] += 1
                latency += rng.uniform(0.05, 0.5)
            self._at(self.now + latency, "deliver", (src, dst, msg))

    def _on_deliver(self, arg: tuple[int, int, Message]) -> None:
        src, dst, msg = arg
        replica = self.replicas[dst]
        if replica.node is None or (src, dst) in self.blocked:
            return
        self._log(f"deliver {src}->{dst} {msg}")
        replica.node.receive(src, msg, self.now)
        self._after_input(replica)

    # -- clients ---------------------------------------------------------------------------

    def _on_client(self, rid: str) -> None:
        client = self.clients[rid]
        if client.done or client.waiting_on is not None:
            return
        replica = self.replicas[self.rng.choice(self.members)]
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
        victim = self.replicas[fault.nodes[0]]
        if fault.kind == "partition":
            other = (
                fault.nodes[1:] if fault.link else [m for m in self.members if m not in fault.nodes]
            )
            for a in fault.nodes[:1] if fault.link else fault.nodes:
                for b in other:
                    self.blocked |= {(a, b), (b, a)}
        elif victim.node is None:
            return
        elif fault.kind == "stop":
            victim.node.stop(self.now)
            self._after_input(victim)
        elif fault.kind == "wipe":
            victim.wipe_armed = True
        elif fault.kind == "lose-unsynced":
            victim.power_cut_armed = True
        else:
            self._crash(victim, lose_unsynced=False)
        if fault.kind not in {"lose-unsynced", "wipe"}:  # counted when they strike
            self.faults[fault.kind] += 1
        self._log(f"fault {fault.kind} {fault.nodes} for {fault.duration:.3f}s")
        self._at(self.now + fault.duration, "recover", fault)

    def _on_recover(self, fault: NodeFault) -> None:
        if self.healed:
            return
        victim = self.replicas[fault.nodes[0]]
        if fault.kind == "partition":
            self.blocked.clear()
        elif victim.node is None:
            self._start(victim)
        elif fault.kind in {"lose-unsynced", "wipe"}:
            victim.power_cut_armed = victim.wipe_armed = False
        elif fault.kind == "stop" and victim.node.stopped:
            victim.node.resume(self.now)
            self._after_input(victim)
        self._log(f"recover {fault.kind} {fault.nodes}")

    def _on_heal(self, _: None) -> None:
        self.healed = True
        self.profile = NetworkProfile(drop=0, dup=0, reorder=0, delay=0)
        self.blocked.clear()
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
