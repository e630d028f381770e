"""Each open of a storage is a session (paxmr/stamps.py, went_back): a peer that saw a storage
in a session shows it that it went back, however many writes it made since, and a storage that
only went on is never shown so."""

from __future__ import annotations

from paxmr.stamps import SESSIONS_KEPT, Sightings, Stamp, behind

NONCE = 7


def _seen(stamp: Stamp) -> Sightings:
    """Node 1's sightings of node 2's storage at `stamp`."""
    one = Sightings()
    one.saw(2, stamp)
    return one


def test_a_reverted_storage_that_wrote_past_what_a_peer_saw_is_caught() -> None:
    """Node 1 saw node 2 hold 5 writes in session 1; node 2 was reverted to a snapshot at 2
    writes, started (session 2) and campaigned alone up to 9 writes: its count is above what
    node 1 saw, its session 1 ended at 2."""
    one = _seen(Stamp(NONCE, 5, 1))
    sessions = ((1, 0), (2, 2))
    now = Stamp(NONCE, 9, 2)
    why = behind(now, 1, one.seen[2], (), sessions)
    assert why is not None
    assert "node 1 saw it hold 5 writes before a restart, it ended that run at 2" in why
    assert one.refusal(2, now, sessions) is not None


def test_a_revert_is_not_laundered_by_starting_again() -> None:
    """Started again and again after the revert (fewer than SESSIONS_KEPT times), writing each
    time: the session node 1 saw still ends at the snapshot's count."""
    one = _seen(Stamp(NONCE, 5, 1))
    sessions = ((1, 0), (2, 2), *((s, 10 * s) for s in range(3, SESSIONS_KEPT + 1)))
    now = Stamp(NONCE, 10 * SESSIONS_KEPT + 3, SESSIONS_KEPT)
    assert len(sessions) == SESSIONS_KEPT
    assert behind(now, 1, one.seen[2], (), sessions) is not None
    assert one.refusal(2, now, sessions) is not None


def test_a_snapshot_from_before_a_restart_a_peer_saw_is_caught() -> None:
    """Node 1 saw node 2 in session 2 (which started at 5 writes), at 7; node 2 was reverted
    to a snapshot taken in session 1 at 3 writes: its storage does not record session 2."""
    one = _seen(Stamp(NONCE, 7, 2))
    sessions = ((1, 0), (3, 3))
    now = Stamp(NONCE, 12, 3)
    why = behind(now, 1, one.seen[2], (), sessions)
    assert why is not None
    assert "in a run of it that it does not record" in why
    assert one.refusal(2, now, sessions) is not None


def test_a_storage_that_went_on_is_not_caught() -> None:
    """Restarts with or without writes between them, the peer's sighting in the current
    session or an older one, or in one older than the storage records (more than
    SESSIONS_KEPT restarts since): none went back."""
    sessions = ((1, 0), (2, 5), (3, 5), (4, 9))
    now = Stamp(NONCE, 12, 4)
    for seen in (Stamp(NONCE, 5, 1), Stamp(NONCE, 5, 2), Stamp(NONCE, 12, 4), Stamp(NONCE, 0, 9)):
        assert behind(now, 1, seen, (), sessions) is None, seen
        assert _seen(seen).refusal(2, now, sessions) is None, seen
    kept = sessions[1:]  # session 1 no longer recorded: it ended at 5, where 2 starts
    assert behind(now, 1, Stamp(NONCE, 5, 1), (), kept) is None


def test_a_sighting_or_a_hello_without_sessions_compares_the_counts() -> None:
    """A paxmr before sessions (and a relayed stamp) shows no session: counts alone, as
    before; nothing is caught that the counts do not show."""
    sessions = ((1, 0), (2, 2))
    assert behind(Stamp(NONCE, 4, 2), 1, Stamp(NONCE, 5), (), sessions) is not None
    assert behind(Stamp(NONCE, 9, 2), 1, Stamp(NONCE, 5), (), sessions) is None
    one = _seen(Stamp(NONCE, 5, 1))
    assert one.refusal(2, Stamp(NONCE, 4)) is not None
    assert one.refusal(2, Stamp(NONCE, 9)) is None


def test_a_new_session_is_noted_and_an_old_one_does_not_come_back() -> None:
    """A peer notes the session of the latest stamp it saw: a new run's first stamp at the
    same count replaces the last of the run before; a frame of the run before, late, does not
    take back a higher count."""
    one = _seen(Stamp(NONCE, 5, 1))
    one.saw(2, Stamp(NONCE, 5, 2))
    assert one.seen[2] == Stamp(NONCE, 5, 2)
    one.saw(2, Stamp(NONCE, 6, 2))
    one.saw(2, Stamp(NONCE, 5, 1))
    assert one.seen[2] == Stamp(NONCE, 6, 2)


def test_a_relay_of_another_run_does_not_replace_what_a_node_saw() -> None:
    """Node 3 relays node 2's stamp in a run node 1 did not see (node 3 never saw the writes
    node 1 saw, so it let a reverted run in): node 1 keeps its own sight, which shows the
    revert. A relay within the run node 1 knows is noted, as before."""
    one = _seen(Stamp(NONCE, 5, 1))
    one.heard(2, Stamp(NONCE, 9, 2), ())
    assert one.seen[2] == Stamp(NONCE, 5, 1)
    assert one.refusal(2, Stamp(NONCE, 9, 2), ((1, 0), (2, 2))) is not None
    one.heard(2, Stamp(NONCE, 9), ())  # from a paxmr before sessions: no session
    assert one.seen[2] == Stamp(NONCE, 5, 1)
    one.heard(2, Stamp(NONCE, 7, 1), ())
    assert one.seen[2] == Stamp(NONCE, 7, 1)


def test_a_hello_older_than_a_relay_of_its_own_run_is_let_in() -> None:
    """Node 2 dialled node 1 with its hello at 10 writes in session 1, then wrote an 11th; a
    node that heard it relays the 11 to node 1 before node 1 reads the hello. The run's writes
    only grow (a storage put back opens another run), so the hello is an earlier moment of it,
    not a revert: let in (it was refused, and node 2 dialled again). A revert is still caught
    from any other run, and a hello without sessions is still compared by counts."""
    one = _seen(Stamp(NONCE, 10, 1))
    one.heard(2, Stamp(NONCE, 11, 1), ())
    assert one.seen[2] == Stamp(NONCE, 11, 1)
    assert one.refusal(2, Stamp(NONCE, 10, 1), ((1, 0),)) is None
    assert one.refusal(2, Stamp(NONCE, 12, 2), ((1, 0), (2, 10))) is not None  # put back at 10
    assert one.refusal(2, Stamp(NONCE, 12, 2), ((2, 10),)) is not None  # before session 1
    assert one.refusal(2, Stamp(NONCE, 10)) is not None
    # What node 2's own storage is shown is exact, so this node's hello still shows a storage
    # that went back within a run (a VM's memory and disk reverted together) to that node.
    assert behind(Stamp(NONCE, 10, 1), 1, one.seen[2], (), ((1, 0),)) is not None
