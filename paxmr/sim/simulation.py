"""What every schedule's run holds: its seed and random generator, the members, the core and
the driver under test, the trace, the clock, the fault counts and the checker."""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, Protocol

from paxmr.paxos import Node
from paxmr.sim.checker import Checker

if TYPE_CHECKING:
    from collections.abc import Sequence

    from paxmr.paxos import CoreConfig, DurableState

# How a driver orders a Ready's effects around the commit of its persist.
STRICT = "strict"  # everything waits for the commit: the contract documented in paxmr.paxos
EARLY = "early"  # only Prepare and acceptor replies wait (paxos.split, as the PRM does)
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


class Simulation:
    def __init__(
        self,
        seed: int,
        size: int,
        node_factory: NodeFactory = Node,
        driver: str = EARLY,
        trace: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.members = tuple(range(1, size + 1))  # the founding members
        self.factory = node_factory
        self.driver = driver
        self.tracing = trace
        self.trace: list[str] = []
        self.now = 0.0
        self.faults: Counter[str] = Counter()
        self.checker = Checker()

    def _log(self, text: str) -> None:
        if self.tracing:
            self.trace.append(f"{self.now:9.4f} {text}")
