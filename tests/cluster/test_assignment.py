"""The assignment on a real 3-node cluster, through the real CLI: map, reduce, replicate, query.

Also what the log must guarantee when every node replicates at once (each request lands exactly
once, in one order everywhere) and how the CLI refuses bad input without touching the log.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from paxmr import control
from tests.support.local import REPLICATE_TIMEOUT, Cluster, Node, running_cluster, small_tally

pytestmark = pytest.mark.integration

SEEDS = {1: 11, 2: 12, 3: 13}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A fresh cluster with two mappers per node: the scenario expects an empty log."""
    with running_cluster(mappers=2) as c:
        yield c


def _show(word: bytes) -> str:
    return word.decode("utf-8", "backslashreplace")


def _entries(node: Node) -> list[dict[str, object]]:
    return node.cli_json("print")["entries"]  # type: ignore[no-any-return]


def test_three_nodes_map_reduce_replicate_and_agree(cluster: Cluster) -> None:
    texts: dict[int, bytes] = {}
    for n in cluster.nodes:
        gen = n.cli(
            "gen-corpus", "--size", "256KiB", "--seed", SEEDS[n.id], n.data / f"t{n.id}.txt"
        )
        assert gen.returncode == 0, gen.stderr
        texts[n.id] = (n.data / f"t{n.id}.txt").read_bytes()

    # Every node runs its own job at the same time, as three operators would.
    procs = {n.id: n.popen("-o", "json", "run", f"t{n.id}.txt") for n in cluster.nodes}
    runs = {}
    for node_id, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"node {node_id}: {err}"
        runs[node_id] = json.loads(out)
    positions = {node_id: r["position"] for node_id, r in runs.items()}
    assert sorted(positions.values()) == [0, 1, 2], positions

    digest = cluster.converged()
    expected = {node_id: Counter(text.split()) for node_id, text in texts.items()}
    everything = sum(expected.values(), Counter())

    prints = {n.id: n.cli_json("print") for n in cluster.nodes}
    totals = {n.id: n.cli_json("total", 0, 1, 2) for n in cluster.nodes}
    merges = {n.id: n.cli_json("merge", 0, 1, 2, "--top", 0) for n in cluster.nodes}
    texts_out = {n.id: n.cli("print").stdout for n in cluster.nodes}
    for answer in (*prints.values(), *totals.values(), *merges.values()):
        answer.pop("freshness")  # about each node's own replica (leader, lag), not the log

    # Identical on every node: the log, its digest, and every query over it.
    assert all(p == prints[1] for p in prints.values()), prints
    assert prints[1]["digest"] == digest
    assert {n.status()["digest"] for n in cluster.nodes} == {digest}
    assert all(t == totals[1] for t in totals.values())
    assert all(m == merges[1] for m in merges.values())
    assert all(t == texts_out[1] for t in texts_out.values())

    # The log holds each node's tally at the position its `run` reported.
    entries = prints[1]["entries"]
    assert [e["position"] for e in entries] == [0, 1, 2]
    for node_id, pos in positions.items():
        entry = entries[pos]
        assert entry["file"] == f"t{node_id}.txt_reduced"
        assert entry["node"] == node_id
        assert entry["words"] == sum(expected[node_id].values())
        assert entry["distinct"] == len(expected[node_id])
        assert entry["request_id"] == runs[node_id]["replicate"]["request_id"]
        single = cluster.node(node_id).call("total", {"positions": [pos]})
        assert single["total"] == sum(expected[node_id].values())
    for name in (f"t{i}.txt_reduced" for i in SEEDS):
        assert name in texts_out[1]

    # total and merge agree with a plain Counter over the three texts.
    assert totals[1]["total"] == sum(everything.values())
    merged = merges[1]
    assert merged["total"] == sum(everything.values())
    assert merged["distinct"] == len(everything)
    assert dict(merged["words"]) == {_show(w): n for w, n in everything.items()}
    assert cluster.node(2).cli("total", 0, 1, 2).stdout.strip() == str(sum(everything.values()))

    # merge --top N gives the N most common, most common first.
    top = cluster.node(3).cli_json("merge", 0, 1, 2, "--top", 5)["words"]
    assert [n for _, n in top] == [n for _, n in everything.most_common(5)]


def test_concurrent_replicates_land_exactly_once(cluster: Cluster) -> None:
    for n in cluster.nodes:
        small_tally(n)
    before = len(_entries(cluster.node(1)))

    # Real CLI processes on every node at the same time...
    procs = [(n, n.popen("-o", "json", "replicate", "small_reduced")) for n in cluster.nodes * 2]
    # ...and in-process clients hammering every node, each request also retried on another node
    # at the same time (same request id): a retry must never land twice.
    rids = [uuid.uuid4().hex for _ in range(45)]
    acks: dict[str, set[int]] = {}
    lock = threading.Lock()

    def send(i: int) -> None:
        rid = rids[i // 2]
        node = cluster.nodes[(i // 2 + i % 2) % 3]  # the two copies go to different nodes
        result = node.replicate("small_reduced", rid)
        with lock:
            acks.setdefault(rid, set()).add(result["position"])

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(send, range(2 * len(rids))))

    cli_acks = {}
    for node, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"node {node.id}: {err}"
        result = json.loads(out)
        cli_acks[result["request_id"]] = result["position"]

    # Both copies of a request were told the same position.
    assert all(len(p) == 1 for p in acks.values()), acks
    acked = {rid: p.pop() for rid, p in acks.items()} | cli_acks
    assert len(acked) == len(rids) + len(procs)

    cluster.converged()
    logs = {n.id: _entries(n) for n in cluster.nodes}
    assert all(log == logs[1] for log in logs.values())
    entries = logs[1]
    new = entries[before:]
    # Positions 0..N-1 with no gap; one entry per request, each where its client was told.
    assert [e["position"] for e in entries] == list(range(len(entries)))
    assert len(new) == len(acked)
    assert Counter(e["request_id"] for e in new) == Counter(acked.keys())
    at = {e["request_id"]: e["position"] for e in new}
    assert at == acked

    # A retry after the fact (same request id) reports the same position and adds nothing.
    rid, pos = next(iter(acked.items()))
    again = cluster.node(2).replicate("small_reduced", rid)
    assert again["position"] == pos
    assert cluster.node(2).status()["entries"] == len(entries)


@pytest.fixture
def unchanged(cluster: Cluster) -> Iterator[None]:
    """The test must leave every node's log exactly as it found it."""
    digest = cluster.converged()
    entries = cluster.node(1).status()["entries"]
    yield
    assert cluster.converged() == digest
    assert cluster.node(1).status()["entries"] == entries


NOT_TALLIES = {
    "plain_text": b"just some words, not a tally\n",
    "empty": b"",
    "negative_count": b"paxmr-tally 1\nalpha\t-3\n",
    "unsorted": b"paxmr-tally 1\nbeta\t1\nalpha\t2\n",
    "wrong_version": b"paxmr-tally 2\nalpha\t1\n",
    "binary": bytes(range(256)) * 4,
}


def test_a_follower_forwards_64_replicates_at_once_and_every_one_lands(cluster: Cluster) -> None:
    """Small forwarded values are checked by the leader at once, not as heavy work: 64 clients
    of a follower (forwarded together) are not refused as busy."""
    follower = cluster.node(cluster.leader() % 3 + 1)
    small_tally(follower)
    rids = [uuid.uuid4().hex for _ in range(64)]
    with ThreadPoolExecutor(64) as pool:
        landed = list(pool.map(lambda rid: follower.replicate("small_reduced", rid), rids))
    assert len({r["position"] for r in landed}) == len(rids)


@pytest.mark.parametrize("kind", sorted(NOT_TALLIES))
def test_replicating_a_file_that_is_not_a_tally_is_refused(
    cluster: Cluster, unchanged: None, kind: str
) -> None:
    node = cluster.node(2)
    (node.data / f"bad_{kind}").write_bytes(NOT_TALLIES[kind])
    done = node.cli("replicate", f"bad_{kind}")
    assert done.returncode == 1, done
    assert "not a reduced tally" in done.stderr
    assert f"bad_{kind}" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_replicating_a_missing_file_is_refused(cluster: Cluster, unchanged: None) -> None:
    done = cluster.node(1).cli("replicate", "no_such_file_reduced")
    assert done.returncode == 1, done
    assert "no_such_file_reduced" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "name",
    ["../paxmr.toml", "../tls/peer-key", "/etc/passwd", "sub/../../state/prm.db", "escape_link"],
)
def test_replicating_a_path_outside_the_data_directory_is_refused(
    cluster: Cluster, unchanged: None, name: str
) -> None:
    node = cluster.node(3)
    link = node.data / "escape_link"
    if not link.is_symlink():
        # A link inside the data directory to a valid tally outside it: refused all the same.
        outside = cluster.root / "outside_reduced"
        outside.write_bytes(b"paxmr-tally 1\nalpha\t1\n")
        link.symlink_to(outside)
    done = node.cli("replicate", name)
    assert done.returncode == 1, done
    assert "outside the data directory" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("command", "positions"),
    [
        ("total", ["999"]),
        ("total", ["0", "1000000"]),
        ("merge", ["4242"]),
        ("merge", ["0", "77777"]),
    ],
)
def test_unknown_log_position_is_a_clear_error(
    cluster: Cluster, unchanged: None, command: str, positions: list[str]
) -> None:
    entries = cluster.node(1).status()["entries"]
    bad = next(p for p in positions if int(p) >= entries)
    done = cluster.node(1).cli(command, *positions)
    assert done.returncode == 1, done
    assert f"no log position {bad}" in done.stderr
    assert f"0..{entries - 1}" in done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["total", "merge"])
def test_negative_or_missing_positions_are_usage_errors(
    cluster: Cluster, unchanged: None, command: str
) -> None:
    assert cluster.node(1).cli(command, "-1").returncode == 2
    assert cluster.node(1).cli(command).returncode == 2
    assert cluster.node(1).cli(command, "zero").returncode == 2


def test_replicate_request_over_the_control_socket_with_bad_args(
    cluster: Cluster, unchanged: None
) -> None:
    """The PRM validates its control arguments itself, not only the CLI."""
    sock = cluster.node(1).settings.prm_socket
    for args in (
        {},
        {"file": 7},
        {"file": "small_reduced", "request_id": ""},
        {"file": "x", "z": 1},
    ):
        with pytest.raises(control.RemoteError) as err:
            control.call(sock, "replicate", args, timeout=REPLICATE_TIMEOUT * 3)
        assert err.value.code == "bad_args", args


def test_log_object_reflects_the_tally_file(cluster: Cluster) -> None:
    """The entry's digest is the SHA-256 of the tally file it came from (sha256sum checks it)."""
    import hashlib  # noqa: PLC0415

    node = cluster.node(1)
    path: Path = node.data / small_tally(node, "check_reduced")
    result = node.cli_json("replicate", "check_reduced")
    cluster.converged()
    entry = next(e for e in _entries(cluster.node(3)) if e["position"] == result["position"])
    assert entry["digest"] == hashlib.sha256(path.read_bytes()).hexdigest() == result["digest"]
    assert entry["words"] == 6
    assert entry["distinct"] == 3


def test_a_request_id_reused_for_other_content_is_a_conflict(cluster: Cluster) -> None:
    node = cluster.node(2)
    rid = uuid.uuid4().hex
    first = node.cli_json("replicate", small_tally(node, "first_reduced"), "--request-id", rid)
    (node.data / "other_reduced").write_bytes(b"paxmr-tally 1\nzebra\t9\n")
    again = node.cli("replicate", "other_reduced", "--request-id", rid)
    assert again.returncode == 1, again
    assert f"already in the log at position {first['position']} with other content" in again.stderr
    retry = node.cli_json("replicate", "first_reduced", "--request-id", rid)
    assert retry["position"] == first["position"]
    assert len(_entries(node)) == first["position"] + 1


def test_shell_runs_the_log_commands(cluster: Cluster) -> None:
    node = cluster.node(2)
    small_tally(node)
    script = "replicate small_reduced\nprint\ntotal 0\nmerge 0 --top 3\ntotal 999999\nstatus\n"
    done = node.cli("-o", "json", "shell", input=script)
    assert done.returncode == 1, done.stderr  # piped: the exit code of the failed command
    assert "no log position 999999" in done.stderr  # an error does not end the shell
    decoder = json.JSONDecoder()
    out, results = done.stdout.strip(), []
    while out:
        obj, end = decoder.raw_decode(out)
        results.append(obj)
        out = out[end:].strip()
    replicated, log, total, merged, status = results
    assert log["entries"][replicated["position"]]["request_id"] == replicated["request_id"]
    assert total["total"] == log["entries"][0]["words"]
    assert len(merged["words"]) == 3
    assert status["prm"]["node"] == 2
