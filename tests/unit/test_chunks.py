"""Chunked values: a manifest names its parts, and assembling checks them."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from paxmr import chunks
from paxmr.catalog import summarize
from paxmr.logobject import LogObject

OBJ = LogObject.from_counts("f_reduced", 1, "r", [(b"w%05d" % i, i + 1) for i in range(3000)])
VALUE = OBJ.encode()


def _parts_of(parts: list[bytes]):
    return lambda manifest: list(parts)


def test_a_split_value_assembles_to_itself_and_summarizes_as_the_object():
    manifest, parts = chunks.split(VALUE, OBJ.file, OBJ.digest, 1000)
    assert manifest.parts == len(parts) == -(-len(VALUE) // 1000)
    assert all(len(p) <= 1000 for p in parts)
    assert chunks.manifest(manifest.encode()) == manifest
    assert b"".join(manifest.pieces(list(parts))(0)) == VALUE
    assert summarize(manifest.encode(), 4, _parts_of(parts)) == OBJ.summary(4)
    assert len(set(manifest.chunk_ids())) == manifest.parts


def test_missing_or_altered_parts_show_as_an_error_never_as_another_object():
    manifest, parts = chunks.split(VALUE, OBJ.file, OBJ.digest, 1000)
    missing: list[bytes | None] = [*parts[:-1], None]
    with pytest.raises(chunks.BadManifest, match="not in the log"):
        manifest.pieces(missing)
    altered = [parts[0][:-1] + b"\x00", *parts[1:]]
    with pytest.raises(chunks.BadManifest, match="digest"):
        manifest.pieces(altered)
    shown = summarize(manifest.encode(), 0, _parts_of(altered))
    assert "error" in shown
    assert "error" in summarize(manifest.encode(), 0)  # no way to read its parts


def test_only_a_well_formed_small_manifest_is_one():
    assert chunks.manifest(VALUE) is None  # a log object is not a manifest
    assert chunks.manifest(b"\xc1") is None
    huge = chunks.Manifest("f", "d", "0" * 64, 1 << 40, 1 << 41)
    assert chunks.manifest(huge.encode()) is None  # could make a reader list 2**40 parts
    short = chunks.Manifest("f", "d", "0" * 63, 2, 10)
    assert chunks.manifest(short.encode()) is None


def test_a_reclaim_entry_empties_the_chunks_below_the_previous_one_that_no_manifest_names(
    tmp_path,
):
    """The rule of chunks.py, on a real storage: a manifest before the reclaim entry keeps its
    chunks; one after it does not, and then shows an error, as on every replica."""
    from paxmr.paxos import LogEntry, Persist  # noqa: PLC0415
    from paxmr.services import heavy  # noqa: PLC0415
    from paxmr.storage import Storage  # noqa: PLC0415

    kept, kept_parts = chunks.split(VALUE, OBJ.file, OBJ.digest, len(VALUE) // 2 + 1)
    other = LogObject.from_counts("g_reduced", 1, "s", [(b"x", 1)])
    lost, lost_parts = chunks.split(other.encode(), other.file, other.digest, 1 << 20)
    ids = kept.chunk_ids()
    log = [
        LogEntry(0, ids[0], kept_parts[0], None),
        LogEntry(1, ids[1], kept_parts[1], None),
        LogEntry(2, "r", kept.encode(), 0),
        LogEntry(3, lost.chunk_ids()[0], lost_parts[0], None),  # its upload was cut short
        LogEntry(4, chunks.reclaim_id(None), b"", None),
        LogEntry(5, ids[0], kept_parts[0], None),  # a retry's copy, after the first reclaim
        LogEntry(6, chunks.reclaim_id(4), b"", None),
        LogEntry(7, "s", lost.encode(), 1),  # its manifest, too late
    ]
    storage = Storage.open(tmp_path / "log.db", bootstrap=True)
    storage.commit(Persist(log=log[:4]))
    assert storage.loose_chunks()  # slot 3
    # The rest committed, and a crash before the reclaim entries took effect: the restart
    # does them in log order, and the late manifest at slot 7 does not count for them.
    storage.commit(Persist(log=log[4:]))
    assert storage.reclaim_chunks(0, 4) == 0  # the first reclaim entry only starts a period
    assert storage.reclaim_chunks(4, 6) == len(lost_parts[0])
    assert storage.reclaim_chunks(4, 6) == 0  # done again: nothing more
    assert not storage.loose_chunks()  # slot 5 is named by the manifest at slot 2
    db = str(tmp_path / "log.db")
    assert heavy.stored_summary(db, 2, 0) == OBJ.summary(0)
    assert "reclaimed" in heavy.stored_summary(db, 7, 1)["error"]
    assert [bytes(e.value) == b"" for e in storage.load().log] == [
        False, False, False, True, True, False, True, False,
    ]  # fmt: skip


def test_the_chunks_of_a_manifest_that_failed_are_reclaimed_too(tmp_path):
    """A manifest that lands after a reclaim entry emptied one of its chunks shows an error;
    its other chunks, which no object can use, leave the quota at the next reclaim entry
    instead of being kept by the name of a manifest that failed."""
    from paxmr.paxos import LogEntry, Persist  # noqa: PLC0415
    from paxmr.services import heavy  # noqa: PLC0415
    from paxmr.storage import Storage  # noqa: PLC0415

    late, parts = chunks.split(VALUE, OBJ.file, OBJ.digest, len(VALUE) // 2 + 1)
    ids = late.chunk_ids()
    storage = Storage.open(tmp_path / "log.db", bootstrap=True)
    storage.commit(Persist(log=[
        LogEntry(0, ids[0], parts[0], None),
        LogEntry(1, chunks.reclaim_id(None), b"", None),
        LogEntry(2, ids[1], parts[1], None),
        LogEntry(3, chunks.reclaim_id(1), b"", None),
    ]))  # fmt: skip
    assert storage.reclaim_chunks(1, 3) == len(parts[0])
    storage.commit(Persist(log=[LogEntry(4, "r", late.encode(), 0)]))  # too late
    assert "reclaimed" in heavy.stored_summary(str(tmp_path / "log.db"), 4, 0)["error"]
    assert storage.loose_chunks()  # slot 2: the leader proposes the next reclaim entry
    storage.commit(Persist(log=[LogEntry(5, chunks.reclaim_id(3), b"", None)]))
    assert storage.reclaim_chunks(3, 5) == len(parts[1])
    assert not storage.loose_chunks()
    # Whole means as heavy._Parts reads them: each chunk's first copy before the manifest.
    copies = {ids[0]: (0, True), ids[1]: (2, True)}
    assert chunks.kept([(4, late.encode())], copies) == set(ids)
    assert chunks.kept([(1, late.encode())], copies) == set()  # chunk 1 came after it
    assert chunks.kept([(4, late.encode())], {**copies, ids[0]: (0, False)}) == set()


def test_an_empty_chunk_is_missing_in_the_simulator_as_on_a_prm(tmp_path):
    """A chunk whose value is empty (emptied by a reclaim entry, or forged so) is not there:
    a forged manifest whose two parts are the whole value and an empty chunk (they hash to
    its digest) shows the same error in the simulator's catalog (sim/checker.NodeLog) as in
    a PRM's (heavy.stored_summary, which reads its chunks with heavy._Parts), never the
    object on one of them."""
    from paxmr.paxos import LogEntry, Persist  # noqa: PLC0415
    from paxmr.services import heavy  # noqa: PLC0415
    from paxmr.sim.checker import NodeLog  # noqa: PLC0415
    from paxmr.storage import Storage  # noqa: PLC0415

    forged = chunks.Manifest(OBJ.file, OBJ.digest, hashlib.sha256(VALUE).hexdigest(), 2, len(VALUE))
    ids = forged.chunk_ids()
    log = [
        LogEntry(0, ids[0], VALUE, None),
        LogEntry(1, ids[1], b"", None),
        LogEntry(2, "r", forged.encode(), 0),
    ]
    storage = Storage.open(tmp_path / "log.db", bootstrap=True)
    storage.commit(Persist(log=log))
    on_a_prm = heavy.stored_summary(str(tmp_path / "log.db"), 2, 0)
    simulated = NodeLog()
    for entry in log:
        simulated.append(entry)
    in_the_simulator = dict(simulated.catalog.summaries[0])
    in_the_simulator.pop("slot")
    assert in_the_simulator == on_a_prm
    assert "chunk 1 of 2 is not in the log" in on_a_prm["error"]


def _str8(text: str) -> bytes:
    """A string as msgpack's str 8 form packs it (a packer writes the shortest form; another
    encoder, or a forger, may write this one)."""
    data = text.encode()
    return b"\xd9" + bytes([len(data)]) + data


def test_a_manifest_is_one_whatever_form_its_strings_take():
    """A manifest is told from a log object at a glance (chunks.manifest looks for its kind's
    text before decoding): in any form a msgpack string takes, its bytes are that text."""
    m = chunks.manifest_of("f", "d" * 64, "e" * 64, 5000, 1000)
    fields = {"v": 1, "kind": "chunked", "file": m.file, "digest": m.digest,
              "sha256": m.sha256, "parts": m.parts, "size": m.size}  # fmt: skip
    packed = bytes([0x80 | len(fields)]) + b"".join(
        _str8(key) + (_str8(value) if isinstance(value, str) else msgpack.packb(value))
        for key, value in fields.items()
    )
    assert packed != m.encode()
    assert chunks.manifest(packed) == m
