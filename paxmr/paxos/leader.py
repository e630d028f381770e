"""The proposer role: taking over the log after phase 1, and slots proposed in phase 2."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from paxmr.paxos.log import NOOP, Entry

if TYPE_CHECKING:
    from collections.abc import Iterable

    from paxmr.paxos.ballot import Ballot
    from paxmr.paxos.messages import Promise


@dataclass(slots=True)
class Proposal:
    entry: Entry
    since: float  # when it was proposed: its first copies leave with the next Ready
    acks: set[int] = field(default_factory=set)


@dataclass
class Takeover:
    """What a new leader must propose: slots below `length` are chosen already (it fetches
    them); slots from there to `end` get the highest-ballot value any promise reported, or a
    no-op; new requests go from `end` on."""

    length: int
    end: int
    values: dict[int, Entry]


def plan_takeover(promises: Iterable[Promise], own_len: int) -> Takeover:
    promises = list(promises)
    length = max([own_len, *(p.length for p in promises)])
    best: dict[int, tuple[Ballot, Entry]] = {}
    for promise in promises:
        for acc in promise.accepted:
            if acc.slot >= length and (acc.slot not in best or best[acc.slot][0] < acc.ballot):
                best[acc.slot] = (acc.ballot, acc.entry)
    end = max([length, *(s + 1 for s in best)])
    values = {s: best[s][1] if s in best else NOOP for s in range(length, end)}
    return Takeover(length, end, values)
