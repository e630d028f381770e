"""Fault kinds and the seeded plan of when they strike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random

NETWORK_FAULTS = ("drop", "dup", "reorder", "delay")
NODE_FAULTS = ("partition", "crash", "stop", "lose-unsynced", "wipe")
FAULT_KINDS = NETWORK_FAULTS + NODE_FAULTS


@dataclass(frozen=True, slots=True)
class NodeFault:
    at: float
    kind: str  # one of NODE_FAULTS
    nodes: tuple[int, ...]  # the victim, one side of a partition, or the two ends of a link
    duration: float
    link: bool = False  # a partition that cuts only the link between nodes[0] and nodes[1]


@dataclass(frozen=True, slots=True)
class NetworkProfile:
    """Per-message fault probabilities while faults are on."""

    drop: float
    dup: float
    reorder: float
    delay: float


def plan_faults(
    rng: random.Random, kinds: frozenset[str], members: tuple[int, ...], until: float
) -> tuple[NetworkProfile, list[NodeFault]]:
    profile = NetworkProfile(
        drop=rng.uniform(0.02, 0.2) if "drop" in kinds else 0.0,
        dup=rng.uniform(0.02, 0.1) if "dup" in kinds else 0.0,
        reorder=rng.uniform(0.1, 0.5) if "reorder" in kinds else 0.0,
        delay=rng.uniform(0.02, 0.1) if "delay" in kinds else 0.0,
    )
    faults = []
    for kind in NODE_FAULTS:
        if kind not in kinds:
            continue
        for _ in range(rng.randint(0, 3)):
            at = rng.uniform(0.1, until)
            duration = rng.uniform(0.05, 1.0)
            if kind != "partition":
                faults.append(NodeFault(at, kind, (rng.choice(members),), duration))
            elif rng.random() < 0.5:
                faults.append(NodeFault(at, kind, tuple(rng.sample(members, 2)), duration, True))
            else:
                side = tuple(rng.sample(members, rng.randint(1, len(members) // 2)))
                faults.append(NodeFault(at, kind, side, duration))
    faults.sort(key=lambda f: f.at)
    return profile, faults
