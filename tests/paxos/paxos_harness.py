"""A zero-latency, in-order network for driving a few nodes by hand in tests."""

from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING

import msgpack

from paxmr.paxos import CoreConfig, LogEntry, Message, Node, Persist, Ready, Reply, Request, to_wire
from paxmr.sim.disk import MemoryStorage
from paxmr.sim.simulation import NodeFactory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# (src, dst, message) on the wire
Wired = tuple[int, int, Message]

CONFIG = CoreConfig(
    heartbeat_interval=0.05,
    election_timeout_min=0.15,
    election_timeout_max=0.3,
    max_value_bytes=64,
    max_in_flight=8,
    catchup_batch=100,
    request_timeout=1.0,
)


class Harness:
    def __init__(
        self,
        n: int = 3,
        config: CoreConfig = CONFIG,
        factory: NodeFactory = Node,
        seed: int = 0,
        spares: int = 0,
    ) -> None:
        """`n` founding members, and `spares` nodes that may join later (they start, as any
        node that joins, with storage that cannot vote yet)."""
        self.founders = tuple(range(1, n + 1))
        self.members = tuple(range(1, n + spares + 1))  # every node the harness runs
        self.config = config
        self.factory = factory
        self.seed = seed
        self.now = 0.0
        self.disks = {i: MemoryStorage(bootstrap=i <= n) for i in self.members}
        self.nodes: dict[int, Node | None] = {}
        self.wire: deque[Wired] = deque()
        # With a frame limit, a message whose encoding exceeds it is dropped when sent, as the
        # transport drops over-limit frames, and recorded here as (src, dst, kind, bytes).
        self.frame_limit: int | None = None
        self.oversized: list[tuple[int, int, str, int]] = []
        self.cut: set[int] = set()  # nodes whose traffic is dropped
        self.replies: dict[int, list[Reply]] = {i: [] for i in self.members}
        self.applied: dict[int, list[LogEntry]] = {i: [] for i in self.members}
        self.readies: list[tuple[int, Ready]] = []
        self.delivered = 0
        for i in self.members:
            self.start(i)

    def node(self, i: int) -> Node:
        node = self.nodes[i]
        assert node is not None
        return node

    def start(self, i: int) -> None:
        rng = random.Random(self.seed * 100 + i)
        node = self.factory(i, self.founders, self.disks[i].load(), self.config, rng, self.now)
        self.nodes[i] = node
        self.applied[i] = list(self.disks[i].load().log)

    def crash(self, i: int) -> None:
        self.nodes[i] = None

    def flush(self, i: int) -> Ready:
        ready = self.node(i).ready()
        self.readies.append((i, ready))
        self.disks[i].commit(ready.persist)  # persist before anything leaves
        for dst, msg in ready.messages:
            if self.frame_limit is not None:
                size = len(msgpack.packb(to_wire(msg), use_bin_type=True))
                if size > self.frame_limit:
                    self.oversized.append((i, dst, type(msg).__name__, size))
                    continue
            self.wire.append((i, dst, msg))
        self.replies[i].extend(ready.replies)
        self.applied[i].extend(ready.applied)
        return ready

    def deliver(self, limit: int = 1_000_000) -> None:
        while self.wire and limit:
            limit -= 1
            src, dst, msg = self.wire.popleft()
            node = self.nodes.get(dst)  # None: crashed, or no such node
            if node is None or src in self.cut or dst in self.cut:
                continue
            self.delivered += 1
            node.receive(src, msg, self.now)
            self.flush(dst)

    def deliver_where(self, pred: Callable[[int, int, Message], bool]) -> int:
        """Deliver only messages matching pred (also those their delivery produces), in wire
        order; everything else stays on the wire in its order. Returns how many."""
        count = 0
        while True:
            item = next((m for m in self.wire if pred(*m)), None)
            if item is None:
                return count
            self.wire.remove(item)
            self.wire.appendleft(item)
            before = self.delivered
            self.deliver(limit=1)
            count += self.delivered - before

    def take(self, pred: Callable[[int, int, Message], bool]) -> list[Wired]:
        """Remove the messages matching pred from the wire: to drop them, or hold them back
        and `put` them later (a delayed message)."""
        taken = [m for m in self.wire if pred(*m)]
        self.wire = deque(m for m in self.wire if not pred(*m))
        return taken

    def put(self, messages: Iterable[Wired]) -> None:
        """Put held messages back in front of the wire (delivered next)."""
        self.wire.extendleft(reversed(list(messages)))

    def fire(self, i: int) -> Ready:
        """Fire node i's next timer alone (the others are slow), without delivering."""
        node = self.node(i)
        self.now = max(self.now, node.next_deadline())
        node.on_timer(self.now)
        return self.flush(i)

    def wipe(self, i: int, used_round: int | None = None) -> None:
        """Node i loses its disk and restarts from empty, non-voting storage; `used_round` is
        a round the storage layer starts it from, if it does."""
        self.crash(i)
        self.disks[i] = MemoryStorage(bootstrap=False)
        if used_round is not None:
            self.disks[i].commit(Persist(used_round=used_round))
        self.start(i)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            live = [(n.next_deadline(), i) for i, n in self.nodes.items() if n is not None]
            deadline = min(d for d, _ in live)
            if deadline > end:
                break
            self.now = max(self.now, deadline)
            for d, i in live:
                if d <= self.now:
                    self.node(i).on_timer(self.now)
                    self.flush(i)
            self.deliver()
        self.now = end

    def submit(self, i: int, rid: str, value: bytes = b"v") -> None:
        self.node(i).submit(Request(rid, value), self.now)
        self.flush(i)

    def leader(self) -> int | None:
        leaders = [
            i
            for i, n in self.nodes.items()
            if n is not None and n.role == "leader" and i not in self.cut
        ]
        return leaders[0] if len(leaders) == 1 else None

    def elect(self) -> int:
        for _ in range(40):
            self.advance(0.1)
            leader = self.leader()
            if leader is not None:
                return leader
        raise AssertionError("no leader elected")
