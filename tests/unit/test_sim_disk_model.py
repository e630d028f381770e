"""The simulator's disk (paxmr/sim/disk.py) against prm.db (paxmr/storage.py): the same commits
leave the same state, count the same writes and leave the same commits unsynced, so what the
simulator's power cuts may take back is what a power loss may take back from prm.db. And a
founding storage stays one that has written nothing however often its PRM is started while it
waits for its founders (prm.Prm.hear_founders), and no longer is after its first vote."""

from __future__ import annotations

import random

import pytest

from paxmr.paxos import Ballot, DurableState, Entry, LogEntry, Persist
from paxmr.sim.disk import MemoryStorage
from paxmr.storage import Identity, Storage

IDENTITY = Identity("c", (1, 2, 3))


def _persist(rng: random.Random, length: int) -> tuple[Persist, bool]:
    """A commit a core may ask for next, with the driver's durable_log (a Promise waits)."""
    ballot = Ballot(rng.randint(1, 9), rng.randint(1, 3))
    row = (ballot, Entry(f"r{rng.randint(0, 99)}", b"v"))
    log = [
        LogEntry(length + i, f"e{length + i}", b"x", length + i) for i in range(rng.randint(1, 2))
    ]
    persist = rng.choice(
        [
            Persist(),
            Persist(promised=ballot),
            Persist(used_round=ballot.round),
            Persist(accepted={length + 3: row}),
            Persist(log=log),
            Persist(log=log),  # applied entries alone: the common commit of a follower
            Persist(accepted={length + 3: row}, log=log),
        ]
    )
    return persist, rng.random() < 0.3


def _view(s: DurableState) -> tuple[object, ...]:
    return (s.promised, s.used_round, sorted(s.accepted), [e.slot for e in s.log], s.voting)


@pytest.mark.parametrize("seed", range(8))
def test_the_simulated_disk_syncs_and_counts_as_prm_db_does(tmp_path, seed):
    rng = random.Random(seed)
    real = Storage.open(tmp_path / "prm.db", bootstrap=True, identity=IDENTITY, node=1)
    model = MemoryStorage()
    start = real.stamp.writes
    for _ in range(40):
        persist, durable_log = _persist(rng, model.length)
        real.commit(persist, durable_log=durable_log)
        model.commit(persist, durable_log=durable_log)
        assert real.stamp.writes - start == model.stamp.writes, persist
        assert real._unsynced == model.unsynced, persist
        assert real.pristine() == model.pristine(), persist
        assert _view(real.load()) == _view(model.load()), persist
    real.close()


def test_a_founding_storage_started_again_while_it_waits_has_still_written_nothing(tmp_path):
    """The PRM opens prm.db (which writes its owner and the mark) each time it starts: a PRM
    restarted while it waits for its founders must wait again, not vote because the open
    counted as a write; and a storage that voted once is no longer pristine after a restart."""
    path = tmp_path / "prm.db"
    Storage.open(path, bootstrap=True, identity=IDENTITY).close()  # paxmr init --found
    for _ in range(3):
        storage = Storage.open(path, node=1)
        assert storage.pristine()
        storage.close()
    storage = Storage.open(path, node=1)
    storage.commit(Persist(promised=Ballot(1, 2)))
    storage.close()
    assert not Storage.open(path, node=1).pristine()
