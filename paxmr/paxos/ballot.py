"""Ballots: (round, node id), totally ordered so two proposers never share one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class Ballot:
    round: int
    node: int

    def __str__(self) -> str:
        return f"{self.round}.{self.node}"


# Below every real ballot: real rounds start at 1.
ZERO = Ballot(0, 0)
