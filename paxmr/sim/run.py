"""Running many seeds, across worker processes when there are enough of them."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from typing import TYPE_CHECKING

from paxmr.paxos import Node
from paxmr.sim.explore import Explorer
from paxmr.sim.faults import WORKLOAD_KINDS
from paxmr.sim.phases import ForgetWalk, PhaseWalk
from paxmr.sim.simulation import EARLY
from paxmr.sim.world import RunResult, World

if TYPE_CHECKING:
    import random
    from collections.abc import Iterator, Sequence

    from paxmr.paxos import CoreConfig, DurableState
    from paxmr.sim.simulation import NodeFactory

_PER_TASK = 16
TIMED = "timed"  # world.py: a virtual clock, faults, clients, healing, then liveness
ASYNC = "async"  # explore.py: a scheduler orders every event; safety only
SMALL = "small"  # phases.py: small scenarios in phases of who can talk; safety only
FORGET = "forget"  # phases.py: small scenarios that follow the forgotten-promise story
SCHEDULES = (TIMED, ASYNC, SMALL, FORGET)


class _Announcing:
    """The production core with CoreConfig.announce_delay set, as the PRM runs it (the
    simulator's own config announces at once: the bounds of the broken-core tests were measured
    so)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(  # noqa: PLR0917 - the driver interface fixes this signature
        self,
        node_id: int,
        members: Sequence[int],
        durable: DurableState,
        config: CoreConfig,
        rng: random.Random,
        now: float,
    ) -> Node:
        return Node(node_id, members, durable, replace(config, announce_delay=self.delay), rng, now)


def run_seed(  # noqa: PLR0917 - one run's parameters
    seed: int,
    nodes: int,
    kinds: frozenset[str],
    driver: str = EARLY,
    trace: bool = False,
    schedule: str = TIMED,
    announce_delay: float = 0.0,
) -> RunResult:
    if schedule not in {TIMED, ASYNC}:  # workloads (faults.py) are theirs
        kinds -= set(WORKLOAD_KINDS)
    core: NodeFactory = _Announcing(announce_delay) if announce_delay else Node
    if schedule == ASYNC:
        return Explorer(seed, nodes, kinds, core, driver=driver, trace=trace).run()
    if schedule == SMALL:
        return PhaseWalk(seed, nodes, kinds, core, driver=driver, trace=trace).run()
    if schedule == FORGET:
        return ForgetWalk(seed, nodes, kinds, core, driver=driver, trace=trace).run()
    return World(seed, nodes, kinds, core, driver=driver, trace=trace).run()


def _run(task: tuple[int, int, frozenset[str], str, bool, str, float]) -> RunResult:
    return run_seed(*task)


def run_seeds(  # noqa: PLR0917 - one campaign's parameters
    seeds: Sequence[int],
    nodes: int,
    kinds: frozenset[str],
    driver: str,
    trace: bool,
    workers: int,
    schedule: str = TIMED,
    announce_delay: float = 0.0,
) -> Iterator[RunResult]:
    """Results in seed order; each run depends only on its seed, so workers change nothing."""
    tasks = [(seed, nodes, kinds, driver, trace, schedule, announce_delay) for seed in seeds]
    if workers <= 1 or len(tasks) <= _PER_TASK:
        yield from map(_run, tasks)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(_run, tasks, chunksize=_PER_TASK)
