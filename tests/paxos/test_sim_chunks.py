"""The simulator's chunks workload (issue 12): clients replicate tallies over the value limit as
chunks and a manifest, as the PRM does, under every fault; every replica shows each committed
one assembled, and no chunk takes a position."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from paxmr.paxos import Entry, LogEntry, Node
from paxmr.paxos.log import AppliedLog
from paxmr.sim.explore import Explorer
from paxmr.sim.faults import FAULT_KINDS, WORKLOAD_KINDS
from paxmr.sim.world import World

KINDS = frozenset(FAULT_KINDS + WORKLOAD_KINDS)


class _ChunksWithPositions(AppliedLog):
    """Broken on purpose: a chunk is applied as a request (it takes a position)."""

    def apply_learned(self, stop: Callable[[Entry], bool] | None = None) -> list[LogEntry]:
        applied: list[LogEntry] = []
        while (entry := self._learned.pop(self.length, None)) is not None:
            request = not entry.is_noop and not entry.is_membership
            position = self.count if request and entry.request_id not in self.positions else None
            log_entry = LogEntry(self.length, entry.request_id, entry.value, position)
            self._append(log_entry)
            applied.append(log_entry)
            if stop is not None and stop(entry):
                break
        return applied


class ChunksTakePositions(Node):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.log.__class__ = _ChunksWithPositions


def _campaign(nodes: int, seeds: range, **world: object) -> tuple[list[str], int]:
    violations, chunked = [], 0
    for seed in seeds:
        result = World(seed, nodes, KINDS, **world).run()  # type: ignore[arg-type]
        violations += [f"seed {seed}: {v}" for v in result.violations]
        chunked += result.faults["chunks"]
    return violations, chunked


@pytest.mark.parametrize("nodes", [3, 5])
def test_chunked_tallies_commit_and_show_alike_under_faults(nodes):
    violations, chunked = _campaign(nodes, range(12))
    assert violations == []
    assert chunked >= 12  # most runs commit both of their chunked objects


def test_a_core_that_gives_chunks_positions_is_caught():
    violations, _ = _campaign(3, range(3), node_factory=ChunksTakePositions)
    assert any("chunk" in v for v in violations), violations


def test_the_async_schedule_forges_values_and_replicates_chunked_tallies():
    """The async schedule injects forged values (some of them a manifest with an empty chunk)
    and chunked tallies too: every replica applies them through the PRM's catalog without
    raising, and safety holds."""
    results = [Explorer(seed, 3, KINDS).run() for seed in range(40)]
    assert [(r.seed, r.violations) for r in results if r.violations] == []
    faults = sum((r.faults for r in results), start=Counter())
    assert faults["forge"] > 0
    assert faults["chunks"] > 0  # chunked objects committed
