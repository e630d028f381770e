"""Running many seeds, across worker processes when there are enough of them."""

from __future__ import annotations

import multiprocessing
from typing import TYPE_CHECKING

from paxmr.sim.world import EARLY, RunResult, World

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

_PER_TASK = 16


def run_seed(
    seed: int, nodes: int, kinds: frozenset[str], driver: str = EARLY, trace: bool = False
) -> RunResult:
    return World(seed, nodes, kinds, driver=driver, trace=trace).run()


def _run(task: tuple[int, int, frozenset[str], str, bool]) -> RunResult:
    return run_seed(*task)


def run_seeds(  # noqa: PLR0917 - one campaign's parameters
    seeds: Sequence[int],
    nodes: int,
    kinds: frozenset[str],
    driver: str,
    trace: bool,
    workers: int,
) -> Iterator[RunResult]:
    """Results in seed order; each run depends only on its seed, so workers change nothing."""
    tasks = [(seed, nodes, kinds, driver, trace) for seed in seeds]
    if workers <= 1 or len(tasks) <= _PER_TASK:
        yield from map(_run, tasks)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(_run, tasks, chunksize=_PER_TASK)
