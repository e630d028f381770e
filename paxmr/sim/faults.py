"""Fault kinds and the seeded plan of when they strike.

Each seed draws its own mix: which of the allowed kinds it uses and how hard, and possibly one
message kind it delays on purpose (a targeted delay), so that a campaign covers quiet runs,
single-fault runs and storms alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import random

# Per message: lost, delivered twice, a little late, very late (up to several election
# timeouts), and any earlier message delivered again at a later time (a replayed frame).
NETWORK_FAULTS = ("drop", "dup", "reorder", "delay", "replay")
# Per node or link: cut links (two-way, one-way or a whole side: messages lost), clogged links
# (FoundationDB's swizzle-clogging: the links of some nodes clog one by one and unclog in random
# order, their messages held and then delivered late), a crash and restart, the
# assignment's stop, a power cut that loses unsynced writes, a lost disk (after any commit),
# and a malformed value forwarded by a peer that holds the cluster key.
NODE_FAULTS = ("partition", "clog", "crash", "stop", "lose-unsynced", "wipe", "forge")
# Membership changes at random moments (members.py): add, promote, remove, replace, rejoin.
MEMBER_FAULTS = ("member",)
FAULT_KINDS = NETWORK_FAULTS + NODE_FAULTS + MEMBER_FAULTS
# Workloads beside the faults (timed and async schedules; they draw nothing from a seed's fault
# plan): chunks: a few clients replicate a tally over the value limit as its chunks and then its
# manifest, as the PRM does (paxmr/chunks.py), so campaigns check chunked tallies and their
# catch-up. On by default in `paxmr sim`; the tests' fixed schedules run without it.
WORKLOAD_KINDS = ("chunks",)
# Operator mistakes (issue 9), off by default, as today's core is safe against none of them
# (README): a node whose disk was lost restarts with a stale configured member list (with no
# stored identity the PRM takes the configured one, services/prm.founders; async and forget
# schedules); `paxmr init --found` with the cluster's own id on a member whose disk was lost
# (refused if a peer it reaches has entries, else it starts empty as a voter; async); a node's
# storage rolled back to an earlier durable state (an old prm.db or VM snapshot; async).
MISTAKE_KINDS = ("stale-members", "reinit", "restore-old")
KNOWN_KINDS = FAULT_KINDS + WORKLOAD_KINDS + MISTAKE_KINDS

# Message kinds a targeted delay may pick (class names in paxmr.paxos.messages).
MESSAGE_KINDS = ("Prepare", "Promise", "Nack", "Accept", "Accepted", "Forward", "CatchupReply")
MAX_DELAY = 1.5  # seconds: five of the simulator's longest election timeouts


@dataclass(frozen=True, slots=True)
class NodeFault:
    at: float
    kind: str  # one of NODE_FAULTS or MEMBER_FAULTS
    nodes: tuple[int, ...]  # the victim (for forge, nodes[1] is the forger)
    duration: float
    cut: frozenset[tuple[int, int]] = frozenset()  # (src, dst) links a partition blocks


@dataclass(frozen=True, slots=True)
class NetworkProfile:
    """Per-message fault probabilities while faults are on."""

    drop: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    replay: float = 0.0
    slow_kind: str | None = None  # a targeted delay: this kind is late with `slow` probability
    slow: float = 0.0


def plan_faults(
    rng: random.Random, kinds: frozenset[str], members: tuple[int, ...], until: float
) -> tuple[NetworkProfile, list[NodeFault]]:
    mix = {k for k in sorted(kinds) if rng.random() < 0.75} or set(kinds)
    slow_kind = rng.choice(MESSAGE_KINDS) if "delay" in mix and rng.random() < 0.5 else None
    profile = NetworkProfile(
        drop=rng.uniform(0.02, 0.2) if "drop" in mix else 0.0,
        dup=rng.uniform(0.02, 0.1) if "dup" in mix else 0.0,
        reorder=rng.uniform(0.1, 0.5) if "reorder" in mix else 0.0,
        delay=rng.uniform(0.02, 0.1) if "delay" in mix else 0.0,
        replay=rng.uniform(0.005, 0.05) if "replay" in mix else 0.0,
        slow_kind=slow_kind,
        slow=rng.uniform(0.3, 0.9) if slow_kind else 0.0,
    )
    faults = []
    most = 2 + len(members) // 2
    for kind in NODE_FAULTS:
        if kind not in mix:
            continue
        for _ in range(rng.randint(0, most)):
            at = rng.uniform(0.1, until)
            duration = rng.uniform(0.05, 1.0)
            if kind == "partition":
                faults.append(NodeFault(at, kind, (), duration, cut_links(rng, members)))
            elif kind == "clog":
                faults.extend(_swizzle(rng, members, at))
            elif kind == "forge":
                faults.append(NodeFault(at, kind, tuple(rng.sample(members, 2)), 0.0))
            elif kind == "lose-unsynced" and rng.random() < 0.3:
                # A power cut of a whole rack: several nodes at once (correlated failures).
                victims = tuple(rng.sample(members, rng.randint(2, len(members))))
                faults.append(NodeFault(at, kind, victims, duration))
            else:
                faults.append(NodeFault(at, kind, (rng.choice(members),), duration))
    if "member" in mix:
        faults.extend(
            NodeFault(rng.uniform(0.1, until), "member", (), 0.0)
            for _ in range(rng.randint(1, 2 * most))
        )
    faults.sort(key=lambda f: f.at)
    return profile, faults


def _swizzle(rng: random.Random, members: tuple[int, ...], at: float) -> list[NodeFault]:
    """Clog the links of a few nodes one by one; each unclogs after its own delay, so they
    unclog in an order of their own."""
    nodes = rng.sample(members, rng.randint(1, len(members) - 1))
    links = [(a, b) for a in nodes for b in members if a != b]
    links += [(b, a) for a, b in links if rng.random() < 0.5]
    rng.shuffle(links)
    faults = []
    for k, link in enumerate(links):
        start = at + k * rng.uniform(0.0, 0.05)
        faults.append(NodeFault(start, "clog", (), rng.uniform(0.1, MAX_DELAY), frozenset([link])))
    return faults


def cut_links(rng: random.Random, members: tuple[int, ...]) -> frozenset[tuple[int, int]]:
    """A two-way or one-way cut of one link, or of a side from the rest (one-way: asymmetric)."""
    if rng.random() < 0.5:
        a, b = rng.sample(members, 2)
        side, rest = [a], [b]
    else:
        side = rng.sample(members, rng.randint(1, len(members) // 2))
        rest = [m for m in members if m not in side]
    pairs = {(a, b) for a in side for b in rest}
    way = rng.choice(("both", "out", "in"))
    if way == "both":
        pairs |= {(b, a) for a, b in pairs}
    elif way == "in":
        pairs = {(b, a) for a, b in pairs}
    if len(pairs) > 1 and rng.random() < 0.3:
        pairs.discard(rng.choice(sorted(pairs)))  # one link of the cut still gets through
    return frozenset(pairs)
