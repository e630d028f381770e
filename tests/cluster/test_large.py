"""Large log objects: the value limit, and catch-up of entries that together outgrow a peer frame."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from paxmr import chunks, control, local, tallyvalue
from paxmr.paxos import CHUNK_PREFIX
from paxmr.services.prm import spool_dir
from tests.support import peerwire as wire
from tests.support.local import Cluster, Node, running_cluster, service_env, sigkill
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

# Tallies with few, long words: megabytes of value without megabytes of parsing.
WORD = 1000


def _tally(node: Node, name: str, size: int) -> str:
    words = sorted(b"w%07d" % i + b"x" * WORD for i in range(size // (WORD + 11)))
    (node.data / name).write_bytes(b"paxmr-tally 1\n" + b"".join(w + b"\t1\n" for w in words))
    return name


def _catches_up(cluster: Cluster, size: int, entries: int, timeout: float = 60) -> None:
    """A follower misses ``entries`` entries of ``size`` bytes, resumes and catches up."""
    leader = cluster.node(cluster.leader())
    lagger = cluster.node(leader.id % 3 + 1)
    for n in cluster.nodes:
        _tally(n, "big_reduced", size)
    assert lagger.cli("stop").returncode == 0
    try:
        for _ in range(entries):
            leader.replicate("big_reduced")
        target = cluster.converged(nodes=[n for n in cluster.nodes if n.id != lagger.id])
    finally:
        assert lagger.cli("resume").returncode == 0
    assert cluster.converged(timeout=timeout) == target


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as c:
        yield c


def _same_everywhere(cluster: Cluster, position: int) -> dict[str, Any]:
    """The entry at ``position`` and its merge, identical on every node; returns the merge."""
    cluster.converged()
    entries = [n.call("print")["entries"][position] for n in cluster.nodes]
    merges = [n.call("merge", {"positions": [position], "top": 0}) for n in cluster.nodes]
    assert all(e == entries[0] for e in entries), entries
    assert "error" not in entries[0], entries[0]
    assert all(m["words"] == merges[0]["words"] for m in merges)
    return dict(merges[0])


def _chunk_rows(node: Node) -> list[tuple[str, int | None]]:
    """The chunk entries of a node's log (read-only, beside the running PRM)."""
    db = sqlite3.connect(f"file:{node.settings.state_dir / 'prm.db'}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT request_id, position FROM log WHERE substr(request_id, 1, ?) = ?",
            (len(CHUNK_PREFIX), CHUNK_PREFIX),
        ).fetchall()
    finally:
        db.close()


def test_a_tally_over_the_value_limit_replicates_as_one_object(cluster: Cluster) -> None:
    node = cluster.node(2)
    limit = node.settings.limits.value_bytes
    path = node.data / _tally(node, "huge_reduced", limit + (1 << 20))
    rid = uuid.uuid4().hex
    done = _until_landed(node, "huge_reduced", rid)  # on a loaded machine, after a retry or two
    assert done["digest"] == hashlib.sha256(path.read_bytes()).hexdigest()
    merged = _same_everywhere(cluster, done["position"])
    assert merged["distinct"] == (limit + (1 << 20)) // (WORD + 11)
    entry = node.call("print")["entries"][done["position"]]
    assert (entry["file"], entry["digest"], entry["request_id"]) == (
        "huge_reduced",
        done["digest"],
        rid,
    )
    # Its chunks hold no position; a retry with its request id lands nothing new.
    chunks = _chunk_rows(node)
    assert len(chunks) == 2
    assert {p for _, p in chunks} == {None}
    entries = len(node.call("print")["entries"])
    assert node.replicate("huge_reduced", rid)["position"] == done["position"]
    assert len(node.call("print")["entries"]) == entries
    assert _chunk_rows(node) == chunks
    assert _spooled(node) == []  # its value was spooled (Prm._log_object) and removed


def _spooled(node: Node) -> list[str]:
    """The spool files of a node's PRM (the values of the replicates it is encoding)."""
    return sorted(p.name for p in spool_dir(node.settings).iterdir())


@pytest.mark.parametrize(
    ("count", "error"),
    [
        (b"07", "count must be a positive integer"),
        # Valid in a tally (a reduce adds counts up), over msgpack's integers: refused in the
        # counts' pass, after the words were spooled.
        (b"%d" % 2**64, "a count over 2**64 - 1 cannot be replicated"),
    ],
)
def test_a_bad_tally_is_refused_naming_its_line_and_leaves_no_spool(
    cluster: Cluster, count: bytes, error: str
) -> None:
    """Read in blocks by a worker (tallyvalue.py), a bad line a megabyte in is named as
    tally.parse names it, the spool file its value went to is removed, and nothing reaches
    the log."""
    node = cluster.node(1)
    lines = [b"w%09d\t%d\n" % (i, 1 + i % 7) for i in range(200_000)]  # 3.2 MB: past a block
    lines[123_456] = b"w%09d\t%s\n" % (123_456, count)
    (node.data / "bad_reduced").write_bytes(b"paxmr-tally 1\n" + b"".join(lines))
    before = node.call("print")["entries"]
    with pytest.raises(control.RemoteError) as refused:
        node.replicate("bad_reduced")
    assert refused.value.code == "bad_tally"
    assert f"bad_reduced:123458: {error}" in str(refused.value)
    assert _spooled(node) == []
    assert node.call("print")["entries"] == before


def test_follower_catches_up_entries_that_together_outgrow_a_frame(cluster: Cluster) -> None:
    """Six 6 MB entries: 36 MB of catch-up against a 32 MiB frame limit."""
    frame = cluster.node(1).settings.limits.frame_bytes
    before = len(cluster.node(3).call("print")["entries"])
    _catches_up(cluster, 6 << 20, entries=frame // (6 << 20) + 1)
    entries = cluster.node(3).call("print")["entries"][before:]
    assert len(entries) == frame // (6 << 20) + 1
    assert len({e["digest"] for e in entries}) == 1


SMALL_FRAMES = {
    # A consistent configuration: every value fits a frame with room to spare.
    "PAXMR_LIMITS__FRAME_BYTES": str(300_000),
    "PAXMR_LIMITS__VALUE_BYTES": str(256 << 10),
}


def test_follower_catches_up_with_a_small_frame_limit() -> None:
    with running_cluster(env=SMALL_FRAMES) as cluster:
        _catches_up(cluster, 230_000, entries=6, timeout=15)  # about 1 s when it works


def test_a_tally_over_the_tally_limit_is_refused_before_it_is_read(cluster: Cluster) -> None:
    """A tally over limits.tally_bytes is refused from its size alone (issue 12: a 200 MiB
    tally was parsed, 690 MiB of memory, before its refusal)."""
    node = cluster.node(3)
    limit = node.settings.limits.tally_bytes
    path = node.data / "vast_reduced"
    with path.open("wb") as f:  # not even a valid tally past its header: it is never read
        f.write(b"paxmr-tally 1\n")
        f.truncate(limit + 1)
    done = node.cli("replicate", "vast_reduced")
    assert done.returncode == 1, done
    assert "tally_bytes" in done.stderr
    assert "too_large" in done.stderr


def test_merge_counts_a_position_listed_twice_twice(cluster: Cluster) -> None:
    node = cluster.node(1)
    (node.data / "m_reduced").write_bytes(b"paxmr-tally 1\nalpha\t3\n")
    position = node.replicate("m_reduced")["position"]
    once = node.cli_json("merge", str(position))
    twice = node.cli_json("merge", str(position), str(position))
    assert twice["total"] == 2 * once["total"]
    total = node.cli_json("total", str(position), str(position))
    assert total["total"] == twice["total"]


# Chunks of 256 KiB: a tally of a few MB spans a dozen of them (the same code as 8 MiB ones).
SMALL_VALUES = SMALL_FRAMES
MULTI = 3 << 20


def _mid_transfer(node: Node, before: int, chunks: int = 3) -> None:
    """Wait until ``chunks`` more slots are chosen on ``node`` than ``before``."""
    wait_until(lambda: node.status()["slots"] >= before + chunks, "chunks chosen", timeout=30)


def _replicating(node: Node, file: str, rid: str) -> tuple[threading.Thread, list[Any]]:
    """A replicate running in a thread; its outcome (a result or an error) lands in the list."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(node.replicate(file, rid))
        except (control.RemoteError, OSError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _until_landed(node: Node, file: str, rid: str) -> dict[str, Any]:
    """Retry with the same request id until it is acknowledged."""
    result: dict[str, Any] = {}

    def landed() -> bool:
        try:
            result.update(node.replicate(file, rid))
        except control.RemoteError as exc:
            errors.append(exc)
            return False
        return True

    errors: list[control.RemoteError] = []
    wait_until(landed, f"{rid} acknowledged", timeout=60, retry_on=(OSError,))
    assert all(e.request_id == rid for e in errors), errors  # each error names it
    return result


def _landed_once(cluster: Cluster, rid: str) -> int:
    cluster.converged()
    positions = [e["position"] for e in cluster.node(1).call("print")["entries"]
                 if e["request_id"] == rid]  # fmt: skip
    assert len(positions) == 1, positions
    return int(positions[0])


def test_a_large_tally_survives_a_follower_killed_mid_transfer() -> None:
    with running_cluster(env=SMALL_VALUES) as cluster:
        leader = cluster.node(cluster.leader())
        victim = cluster.node(leader.id % 3 + 1)
        _tally(leader, "multi_reduced", MULTI)
        rid = uuid.uuid4().hex
        thread, outcome = _replicating(leader, "multi_reduced", rid)
        _mid_transfer(leader, leader.status()["slots"])
        sigkill(victim.prm_pid())
        thread.join()
        assert isinstance(outcome[0], dict), outcome  # the other two are a quorum
        with service_env(SMALL_VALUES):
            local.restart(cluster.root, victim.id, "prm")
        assert _landed_once(cluster, rid) == outcome[0]["position"]
        _same_everywhere(cluster, outcome[0]["position"])


def test_a_large_tally_survives_a_leader_change_mid_transfer() -> None:
    with running_cluster(env=SMALL_VALUES) as cluster:
        old = cluster.node(cluster.leader())
        asked = cluster.node(old.id % 3 + 1)  # a follower: it forwards each chunk
        _tally(asked, "multi_reduced", MULTI)
        rid = uuid.uuid4().hex
        thread, outcome = _replicating(asked, "multi_reduced", rid)
        _mid_transfer(asked, asked.status()["slots"])
        sigkill(old.prm_pid())
        thread.join()
        if not isinstance(outcome[0], dict):  # unknown outcome: retried under its request id
            assert outcome[0].request_id == rid, outcome
        done = _until_landed(asked, "multi_reduced", rid)
        with service_env(SMALL_VALUES):
            local.restart(cluster.root, old.id, "prm")
        assert _landed_once(cluster, rid) == done["position"]
        _same_everywhere(cluster, done["position"])


def test_a_crash_mid_transfer_shows_nothing_and_a_retry_reuses_the_chunks() -> None:
    with running_cluster(env=SMALL_VALUES) as cluster:
        leader = cluster.node(cluster.leader())
        asked = cluster.node(leader.id % 3 + 1)
        _tally(asked, "multi_reduced", MULTI)
        before = cluster.converged()
        rid = uuid.uuid4().hex
        thread, outcome = _replicating(asked, "multi_reduced", rid)
        _mid_transfer(asked, asked.status()["slots"])
        assert len(_spooled(asked)) == 1  # the value its chunks are read from
        sigkill(asked.prm_pid())
        thread.join()
        assert not isinstance(outcome[0], dict), outcome
        others = [n for n in cluster.nodes if n.id != asked.id]
        assert cluster.converged(nodes=others) == before  # chunks, but no half object
        assert len(_spooled(asked)) == 1  # left by the killed PRM
        with service_env(SMALL_VALUES):
            local.restart(cluster.root, asked.id, "prm")
        assert _spooled(asked) == []  # removed by the new one as it started
        cluster.converged()
        # Caught up the chunks too (converged compares entries, which chunks are not): a
        # restarted node may lead before it has, and a leader that has not applied a chunk
        # yet proposes it again on a retry (a second copy, harmless: not shown, and the same
        # bytes), which is what this test would count.
        wait_until(
            lambda: all(_chunk_rows(n) == _chunk_rows(asked) for n in others),
            "node caught up the chunks that landed",
        )
        landed = len(_chunk_rows(asked))
        assert 0 < landed < MULTI // (256 << 10)
        done = asked.replicate("multi_reduced", rid)
        assert _landed_once(cluster, rid) == done["position"]
        rows = _chunk_rows(asked)
        assert len(rows) == len({r for r, _ in rows}), "a chunk was replicated twice"
        _same_everywhere(cluster, done["position"])


def test_a_node_that_was_down_catches_up_a_large_tally() -> None:
    with running_cluster(env=SMALL_VALUES) as cluster:
        _catches_up(cluster, MULTI, entries=2, timeout=30)
        for position in (0, 1):
            _same_everywhere(cluster, position)


def test_a_tally_in_chunks_reports_each_chunk_to_the_client(cluster: Cluster) -> None:
    """The client's wait for an answer starts again with every line from the PRM
    (control.Client), so a replicate of many chunks, which may take longer than the client
    waits in all, is answered, not given up as an unknown outcome half-way (100 MB on the test
    hosts: the CLI gave up at 15 s, the entry landed at 37 s): the PRM says so after each."""
    node = cluster.node(1)
    limit = node.settings.limits.value_bytes
    _tally(node, "reported_reduced", limit + (1 << 20))
    lines: list[dict[str, Any]] = []
    result = control.call(
        node.settings.prm_socket,
        "replicate",
        {"file": "reported_reduced", "request_id": uuid.uuid4().hex},
        timeout=60.0,
        on_progress=lines.append,
    )
    parts = lines[-1]["of"]
    assert parts > 1, lines
    assert lines == [{"chunk": i, "of": parts} for i in range(1, parts + 1)]
    assert result["position"] >= 0


def test_a_manifest_whose_chunk_a_peer_forged_first_shows_alike_on_every_replica() -> None:
    """A peer holding the cluster key forwards a chunk under the content address of an upload
    (chunk ids are public: each chunk's carries the value's SHA-256) before its origin submits
    it, with as many bytes as the real one. The origin then skips that chunk (the log holds
    its id) and its manifest lands over chunks that are not its value: every replica must show
    it alike (chunks.py: an error), the origin included, never the object on one and an error
    on the others."""
    with running_cluster(env=SMALL_VALUES) as cluster:
        leader = cluster.node(cluster.leader())
        forger = next(n for n in cluster.nodes if n.id != leader.id)
        name = _tally(leader, "forged_reduced", MULTI)
        rid = uuid.uuid4().hex
        pieces: list[bytes] = []
        with (leader.data / name).open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            encoded = tallyvalue.encode(f, name, leader.id, rid, pieces.append, size=size)
        limit = int(SMALL_VALUES["PAXMR_LIMITS__VALUE_BYTES"])  # the PRMs' (their env)
        ids = chunks.manifest_of(name, encoded.digest, encoded.sha256, encoded.size, limit)
        forged = ids.chunk_ids()[1]
        # Of the right size: one of another size is refused before the manifest is submitted.
        msg = {"k": "forward", "id": forged, "v": b"x" * limit}
        with wire.as_node(leader, wire.tls_dir(cluster.root, forger.id)) as sock:
            sock.sendall(wire.frame(0, wire.payload(msg, forger.id, leader.id)))
            wait_until(lambda: forged in dict(_chunk_rows(leader)), "the forged chunk chosen")
        position = len(leader.call("print")["entries"])
        # Its answer: the entry that landed is not its value (catalog: the error).
        with pytest.raises(control.RemoteError, match="with other content"):
            leader.replicate(name, rid)
        cluster.converged()
        shown = [n.call("print")["entries"][position] for n in cluster.nodes]
        assert all(s == shown[0] for s in shown), shown
        assert "do not hash to its digest" in shown[0]["error"]


def test_a_retry_after_the_value_limit_changed_is_refused_with_nothing_shown() -> None:
    """A crash mid-transfer leaves chunks cut at one `limits.value_bytes`; the node restarts
    with half of it and the client retries under the same request id. A chunk's id is the
    value's SHA-256 and its index, so chunk i of the new cut has the id of chunk i of the old
    one while covering other bytes: the retry skips the old ones and its manifest would land
    as an error on every replica ("its chunks do not hash to its digest"), using up a position
    and the request id. It is refused before its manifest is submitted, saying why, and a new
    request id lands the object."""
    with running_cluster(env=SMALL_VALUES) as cluster:
        leader = cluster.node(cluster.leader())
        asked = cluster.node(leader.id % 3 + 1)
        _tally(asked, "multi_reduced", MULTI)
        before = cluster.converged()
        rid = uuid.uuid4().hex
        thread, outcome = _replicating(asked, "multi_reduced", rid)
        _mid_transfer(asked, asked.status()["slots"])
        sigkill(asked.prm_pid())
        thread.join()
        assert not isinstance(outcome[0], dict), outcome
        others = [n for n in cluster.nodes if n.id != asked.id]
        assert cluster.converged(nodes=others) == before
        half = {**SMALL_VALUES, "PAXMR_LIMITS__VALUE_BYTES": str(128 << 10)}
        with service_env(half):
            local.restart(cluster.root, asked.id, "prm")
        wrong = rf"chunk 1 of request {rid} with 262144 bytes, not 131072"
        with pytest.raises(control.RemoteError, match=wrong) as refused:
            asked.replicate("multi_reduced", rid)
        assert refused.value.code == "conflict"
        assert "replicate it with a new request id" in str(refused.value)
        assert cluster.converged() == before  # nothing shown anywhere
        done = asked.replicate("multi_reduced", uuid.uuid4().hex)
        _same_everywhere(cluster, done["position"])


def test_a_follower_frozen_with_a_large_entry_unread_is_dialled_again_and_catches_up() -> None:
    """A follower stopped by SIGSTOP for 10 s while a 6 MB Accept is on its way: its kernel
    takes what fits its socket buffer, then the window is zero and the leader's unsent data
    waits past transport.UNACKED_TIMEOUT, so the leader's kernel ends the connection. After
    SIGCONT the leader dials it again and it catches up the entry it never read. Its own
    cluster: a link that carried megabytes before (the module's catch-ups) has grown its
    receive buffer past 6 MB, and kept it."""
    with running_cluster() as cluster:
        leader = cluster.node(cluster.leader())
        frozen = cluster.node(leader.id % 3 + 1)
        others = [n for n in cluster.nodes if n.id != frozen.id]
        for n in cluster.nodes:
            _tally(n, "frozen_reduced", 6 << 20)
        log_at = {n.id: n.prm_log.stat().st_size for n in others}
        pid = frozen.prm_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            # Chosen by the leader and the other follower (a retry or two on a loaded machine).
            _until_landed(leader, "frozen_reduced", uuid.uuid4().hex)
            target = cluster.converged(nodes=others)
            time.sleep(10)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        assert cluster.converged(timeout=60) == target
        caught_up = time.monotonic() - resumed
        dropped = [n.log_events("peer_disconnected", after=log_at[n.id]) for n in others]
        assert any(dropped), "the link outlived the freeze"

        def dialled() -> bool:
            return all(n.status()["peers"][str(frozen.id)]["connected"] for n in others)

        wait_until(dialled, "the links to the resumed follower", timeout=10)
        linked = time.monotonic() - resumed
    print(f"caught up {caught_up:.1f} s after SIGCONT, {linked:.1f} s linked")
