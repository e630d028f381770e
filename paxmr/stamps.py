"""What shows a node that its storage went back in time: each storage's stamp, and what a node
saw of its peers' storages (why and how: paxmr/storage.py). Pure bookkeeping and the rules
that read it, shared by the PRM (storage.py, services/transport.py, services/prm.py) and the
simulator (sim/explore.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass(frozen=True)
class Stamp:
    """A storage at one moment: its random nonce and how many commits it had made durable."""

    nonce: int
    writes: int


class Sightings:
    """The highest stamp a node saw from each peer (`seen`), and the nonces it saw each peer
    replace, oldest first (`retired`); the peers whose stamp it saw itself since it started,
    not only heard of (`direct`: what it relays)."""

    def __init__(self) -> None:
        self.seen: dict[int, Stamp] = {}
        self.direct: set[int] = set()
        self.retired: dict[int, list[int]] = {}
        self._retired_new: list[tuple[int, int]] = []  # retired since the storage last saved

    def copy(self) -> Sightings:
        """A copy without what is yet to be saved (a disk's, in the simulator)."""
        twin = Sightings()
        twin.seen = dict(self.seen)
        twin.retired = {peer: list(nonces) for peer, nonces in self.retired.items()}
        return twin

    def saw(self, peer: int, stamp: Stamp) -> None:
        """Note a stamp received from `peer`. A new nonce retires the one before it; a
        retired one is not noted (it is refused)."""
        if self.replaced(peer, stamp.nonce):
            return
        known = self.seen.get(peer)
        if known is not None and known.nonce != stamp.nonce:
            self._retire(peer, known.nonce)
        if known is None or known.nonce != stamp.nonce or known.writes < stamp.writes:
            self.seen[peer] = stamp
            self.direct.add(peer)

    def heard(self, peer: int, stamp: Stamp, retired: Sequence[int]) -> None:
        """Note what another node relayed of `peer`: the nonces it saw `peer` replace, and its
        stamp, unless that is of a replaced nonce, or of a nonce other than the one this node
        knows (which of the two is newer only a node that saw both can tell, and it relays the
        older one as retired)."""
        for nonce in retired:
            if not self.replaced(peer, nonce):
                self._retire(peer, nonce)
        if self.replaced(peer, stamp.nonce):
            return
        known = self.seen.get(peer)
        if (
            known is None
            or self.replaced(peer, known.nonce)
            or (known.nonce == stamp.nonce and known.writes < stamp.writes)
        ):
            self.seen[peer] = stamp
            self.direct.discard(peer)

    def _retire(self, peer: int, nonce: int) -> None:
        self.retired.setdefault(peer, []).append(nonce)
        self._retired_new.append((peer, nonce))

    def replaced(self, peer: int, nonce: int) -> bool:
        """Whether `peer` replaced its storage of `nonce` by another."""
        return nonce in self.retired.get(peer, ())

    def retired_of(self, peer: int) -> tuple[int, ...]:
        """The nonces `peer` replaced, for a hello or an answer to it: all of them, since each
        is refused (`refusal`), and a node refused but not told why would never fence. Each
        is a storage that peer lost or had demoted, a rare event; the hello's decoder caps
        them (transport.MAX_ARRAY_LEN)."""
        return tuple(self.retired.get(peer, ()))

    def refusal(self, peer: int, stamp: Stamp) -> str | None:
        """Why a connection from `peer` whose hello shows `stamp` is refused, if it is: its
        storage went back in time."""
        if self.replaced(peer, stamp.nonce):
            return (
                f"node {peer}'s storage went back in time: it is one node {peer} had replaced"
                " (a VM snapshot from before a lost disk or a demotion?); it must fence before"
                " it votes again"
            )
        known = self.seen.get(peer)
        if known and known.nonce == stamp.nonce and stamp.writes < known.writes:
            return (
                f"node {peer}'s storage went back in time: it holds {stamp.writes} writes, this"
                f" node saw it hold {known.writes} (a VM snapshot reverted, or its state"
                " directory restored?); it must fence before it votes again"
            )
        return None


def behind(mine: Stamp, peer: int, seen: Stamp | None, retired: Sequence[int]) -> str | None:
    """Why the storage at `mine` went back in time, if `peer` saw it with more writes (`seen`)
    or saw this node replace it (`retired`)."""
    if mine.nonce in retired:
        return (
            f"prm.db went back in time: node {peer} saw this node replace it by a newer"
            " storage (a VM snapshot from before a lost disk or a demotion reverted, or an"
            " old state directory restored)"
        )
    if seen is None or seen.nonce != mine.nonce or seen.writes <= mine.writes:
        return None
    return (
        f"prm.db went back in time: node {peer} saw it hold {seen.writes} writes, it holds"
        f" {mine.writes} (a VM snapshot reverted, or the state directory restored)"
    )


def founded_again(peer: int, length: int | None, seen: Stamp | None) -> str | None:
    """Why a founding storage that has written nothing may not vote beside `peer` of its
    cluster, if what the peer answers shows the cluster ran before it (its log's `length`,
    what it `seen` of this node): `paxmr init --found` on a member of a running cluster."""
    if length:
        return (
            f"a new founding storage (paxmr init --found) beside node {peer}, whose log of this"
            f" cluster has {length} slots: founded again over a member of a running cluster?"
        )
    if seen is not None and seen.writes:
        return (
            f"a new founding storage (paxmr init --found), but node {peer} saw this node hold"
            f" another one with {seen.writes} writes: founded again over a member of a"
            " running cluster?"
        )
    return None
