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
    """A storage at one moment: its random nonce, how many commits it had made durable, and
    the open of it that made them (its random `session`: 0 where not known, from a paxmr
    before sessions)."""

    nonce: int
    writes: int
    session: int = 0


# A storage's latest opens, oldest first, the current one last: each one's session and the
# write count it opened at (which is where the one before it ended).
Sessions = tuple[tuple[int, int], ...]
# How many opens a storage keeps and shows: a peer that saw it in an older one cannot tell it
# from another storage's (went_back).
SESSIONS_KEPT = 32


def went_back(sessions: Sessions, now: Stamp, seen: Stamp) -> str | None:
    """How a storage of `seen`'s nonce, at `now` with its latest opens `sessions`, shows that
    it went back from `seen` (the end of a sentence "... saw it hold"), if it does.

    A write count alone cannot show it: a snapshot reverted whose node then campaigned alone
    (each campaign's round is a write) climbs back to the count a peer saw, with other writes.
    So each open of the storage is a new session, kept durably with the count it opened at
    (storage.py), and a peer notes the session it saw each count in. A storage went back if
    the peer saw it in a session with more writes than that session ended at (the next one's
    start, or its count now), or in a session it does not record with more writes than its
    oldest recorded one started at: a snapshot reverted records the opens up to the one it
    was taken in, that one ending where the snapshot was, and never the ones after it. A
    storage that went on records every session a peer saw it in (its latest SESSIONS_KEPT),
    each with the writes seen in it, or the session is older than those it records, so the
    writes seen in it are at most where the oldest recorded one started. So a reverted node
    cannot launder its revert by campaigning, nor by starting again fewer than SESSIONS_KEPT
    times before a peer that saw the lost writes reaches it. Without sessions (from a paxmr
    before them) the count alone is compared, as before. What no stamp shows: a VM's memory
    reverted with its disk (its process goes on in the same session)."""
    if seen.session and sessions:
        for k, (session, _) in enumerate(sessions):
            if session == seen.session:
                end = sessions[k + 1][1] if k + 1 < len(sessions) else now.writes
                if seen.writes <= end:
                    return None
                if k + 1 < len(sessions):
                    return f"{seen.writes} writes before a restart, it ended that run at {end}"
                return f"{seen.writes} writes, it holds {end}"
        if seen.writes > sessions[0][1]:
            return (
                f"{seen.writes} writes in a run of it that it does not record (it holds"
                f" {now.writes}, in runs since {sessions[0][1]})"
            )
        return None
    if seen.writes > now.writes:
        return f"{seen.writes} writes, it holds {now.writes}"
    return None


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
        if known is None or known.nonce != stamp.nonce or _further(stamp, known):
            self.seen[peer] = stamp
            self.direct.add(peer)

    def heard(self, peer: int, stamp: Stamp, retired: Sequence[int]) -> None:
        """Note what another node relayed of `peer`: the nonces it saw `peer` replace, and its
        stamp, unless that is of a replaced nonce, or of a nonce other than the one this node
        knows (which of the two is newer only a node that saw both can tell, and it relays the
        older one as retired), or of another run than the one this node knows (whether that
        run went on from this node's sight, went_back, only this node can tell: a relaying
        node that never saw the writes this node saw would vouch for a reverted run)."""
        for nonce in retired:
            if not self.replaced(peer, nonce):
                self._retire(peer, nonce)
        if self.replaced(peer, stamp.nonce):
            return
        known = self.seen.get(peer)
        if (
            known is None
            or self.replaced(peer, known.nonce)
            or (
                known.nonce == stamp.nonce
                and known.session in {0, stamp.session}
                and _further(stamp, known)
            )
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

    def refusal(self, peer: int, stamp: Stamp, sessions: Sessions = ()) -> str | None:
        """Why a connection from `peer` whose hello shows `stamp` and its storage's latest
        opens (`sessions`) is refused, if it is: its storage went back in time (went_back).
        Not from a sighting in the run the hello comes from: a run's writes only grow (a
        storage put back opens another run), and a hello may be older than what another node
        relays of its run (sent before the writes the relay shows, read after the relay).
        A VM whose memory is reverted with its disk goes on in its run too; that no stamp
        shows, but what its peers saw of it is still shown to it (behind)."""
        if self.replaced(peer, stamp.nonce):
            return (
                f"node {peer}'s storage went back in time: it is one node {peer} had replaced"
                " (a VM snapshot from before a lost disk or a demotion?); it must fence before"
                " it votes again"
            )
        known = self.seen.get(peer)
        if (
            known
            and known.nonce == stamp.nonce
            and (not known.session or known.session != stamp.session)
            and (why := went_back(sessions, stamp, known))
        ):
            return (
                f"node {peer}'s storage went back in time: this node saw it hold {why} (a VM"
                " snapshot reverted, or its state directory restored?); it must fence before"
                " it votes again"
            )
        return None


def from_ended_run(
    peer: int, latest: Stamp | None, sessions: Sessions, sighting: Stamp
) -> str | None:
    """Why a frame of `peer` showing `sighting` (its write count, in its connection's hello's
    nonce and session) is dropped with its connection, if it is: `peer`'s hello accepted last
    (its stamp `latest`, its storage's latest opens `sessions`) is of another run, and the
    frame shows writes that run's storage no longer holds. A connection's frames can outlive
    its sender's process (say while the receiver was stalled); that hello passed went_back
    without them: counted, they would be a promise or a vote the storage forgot. Lost in the
    network instead, they are harmless, and the live run dials again. Unchecked only from the
    latest hello's nonce and session (the same run, or from a paxmr before sessions, the same
    storage, whose runs no stamp tells apart): a replaced storage's frames never pass."""
    if latest is None or (latest.nonce, latest.session) == (sighting.nonce, sighting.session):
        return None
    if latest.nonce != sighting.nonce:
        why: str | None = "a storage it has since replaced"
    else:
        why = went_back(sessions, latest, sighting)
    return why and (
        f"a frame from an ended run of node {peer} shows it holding {why}: its storage went"
        " back since that frame was sent; dropped, with its connection"
    )


def ended(peer: int, latest: Stamp | None, sessions: Sessions, stamp: Stamp) -> str | None:
    """Why a hello of `peer` showing `stamp` is dropped with its connection, if it is: it is
    of a run that `peer`'s hello accepted last (its stamp `latest`, its storage's latest opens
    `sessions`) records as ended (a session in those opens before its own), read after it
    (delayed in the network, say). What it sent is stale, and its frames, checked against
    their own hello, would skip from_ended_run. Not a storage that went back (refusal would
    say so, an alarm for a healthy restart)."""
    if (
        latest is None
        or latest.nonce != stamp.nonce
        or stamp.session not in {session for session, _ in sessions[:-1]}
    ):
        return None
    return (
        f"a hello of an ended run of node {peer}, read after its next run's; dropped, with its"
        " connection"
    )


def _further(stamp: Stamp, known: Stamp) -> bool:
    """Whether `stamp` is a later sight of the storage than `known` (of the same nonce): more
    writes, or as many in a newer run (its first stamps)."""
    return known.writes < stamp.writes or (
        known.writes == stamp.writes and stamp.session not in {0, known.session}
    )


def behind(
    mine: Stamp,
    peer: int,
    seen: Stamp | None,
    retired: Sequence[int],
    sessions: Sessions = (),
) -> str | None:
    """Why the storage at `mine`, with its latest opens `sessions`, went back in time, if
    `peer` saw it further (`seen`, went_back) or saw this node replace it (`retired`)."""
    if mine.nonce in retired:
        return (
            f"prm.db went back in time: node {peer} saw this node replace it by a newer"
            " storage (a VM snapshot from before a lost disk or a demotion reverted, or an"
            " old state directory restored)"
        )
    if seen is None or seen.nonce != mine.nonce or not (why := went_back(sessions, mine, seen)):
        return None
    return (
        f"prm.db went back in time: node {peer} saw it hold {why} (a VM snapshot reverted, or"
        " the state directory restored)"
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
