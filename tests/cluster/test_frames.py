"""Hostile bytes on a PRM's peer port: dropped, logged, and the cluster carries on.

Two kinds of sender: strangers (plain TCP, TLS without a certificate or with one from another
CA, a certificate for a node id that is not a member), refused before anything they send is read;
and a sender holding node 2's real certificate that sends malformed frames. See
tests/support/peerwire.py for the frame format; frames are built by hand there.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import struct
from pathlib import Path

import msgpack
import pytest

from paxmr import pki
from tests.support import peerwire as wire
from tests.support.local import Cluster, running_cluster
from tests.support.wait import CONVERGE_S, wait_until

pytestmark = pytest.mark.integration

TARGET = 1  # the node under attack; the others stay honest
SENDER = 2  # whose certificate the authenticated attacker holds

# A real message kind that would hurt if it were believed: a Prepare with an enormous ballot
# would make the node promise it and refuse its real leader from then on.
HOSTILE_PREPARE = {"k": "prepare", "b": [2**61, 2], "from": 0, "ep": 0}


def _still_commits(cluster: Cluster) -> None:
    node = cluster.node(TARGET)
    before = node.status()["entries"]
    result = node.replicate("small_reduced")
    assert result["position"] >= before
    cluster.converged(timeout=CONVERGE_S)
    st = node.status()
    assert st["ballot"][0] < 2**61, "a forged Prepare was believed"
    assert st["stopped"] is False
    leader = cluster.node(cluster.leader())
    assert all(p["connected"] for p in leader.status()["peers"].values())


def _p(msg: object, src: object = SENDER, dst: object = TARGET) -> bytes:
    return wire.payload(msg, src, dst)


# Authenticated as node 2, malformed content after the connection's hello: the frame is
# dropped and logged, the connection stays (each frame still takes its sequence number).
DROPPED: dict[str, bytes] = {
    "not_msgpack": b"\xc1\xc1\xc1 not msgpack",
    "not_a_map": msgpack.packb([1, 2, 3]),
    "wrong_dst": _p(HOSTILE_PREPARE, dst=3),
    "src_not_int": _p(HOSTILE_PREPARE, src="2"),
    "unknown_kind": _p({"k": "exec", "cmd": "rm -rf /"}),
    "short_ballot": _p({"k": "prepare", "b": [1], "from": 0}),
    "negative_slot": _p({"k": "accept", "b": [1, 2], "e": [[-1, ["r", b"v"]]], "c": 0}),
    "huge_slot": _p({"k": "accept", "b": [1, 2], "e": [[2**63, ["r", b"v"]]], "c": 0}),
    "bool_as_int": _p({"k": "catchup", "from": True}),
    "value_not_bytes": _p({"k": "forward", "id": "r", "v": "text, not bytes"}),
    "missing_field": _p({"k": "nack", "b": [1, 2]}),
    "extension_type": _p(msgpack.ExtType(5, b"x")),
    "too_many_keys": _p({str(i): i for i in range(40)}),
}

# Authenticated as node 2, but the stream cannot be trusted any more: the connection is closed.
CLOSED: dict[str, bytes] = {
    "oversized_limit_plus_one": struct.pack(">I", (32 << 20) + 9) + b"x" * 64,
    "oversized_4gib": b"\xff\xff\xff\xff" + b"x" * 64,
    "length_without_payload": struct.pack(">IQ", 8, 0),
    "zero_length": b"\x00\x00\x00\x00",
    "claims_another_node": wire.frame(0, _p(HOSTILE_PREPARE, src=3)),
    "sequence_skips": wire.frame(5, _p({"k": "catchup", "from": 0})),
    # The first frame is the hello, whose checks the frames after it must not skip.
    "unreadable_first_frame": wire.frame(0, DROPPED["not_msgpack"]),
}


@pytest.mark.parametrize("case", sorted(DROPPED))
def test_malformed_frame_from_a_peer_is_dropped_and_logged(cluster: Cluster, case: str) -> None:
    node = cluster.node(TARGET)
    offset = wire.log_offset(node)
    with wire.as_node(node, wire.tls_dir(cluster.root, SENDER)) as sock:
        port = sock.getsockname()[1]
        sock.sendall(wire.frame(0, wire.hello(SENDER, TARGET)) + wire.frame(1, DROPPED[case]))
        # The connection is still read: the next frame (also bad) is logged too.
        sock.sendall(wire.frame(2, _p({"k": "bogus"})))

        def two() -> bool:
            found = node.log_events("frame_dropped", after=offset)
            return len([e for e in found if str(port) in str(e.get("peer"))]) >= 2

        wait_until(two, f"{case}: dropped and logged twice for port {port}", timeout=10)
        assert not wire.closed_by_peer(sock, timeout=0.5), f"{case}: connection closed"
    _still_commits(cluster)


@pytest.mark.parametrize("case", sorted(CLOSED))
def test_untrustworthy_stream_from_a_peer_is_closed_and_logged(cluster: Cluster, case: str) -> None:
    node = cluster.node(TARGET)
    offset = wire.log_offset(node)
    with wire.as_node(node, wire.tls_dir(cluster.root, SENDER)) as sock:
        port = sock.getsockname()[1]
        sock.sendall(CLOSED[case])
        assert wire.closed_by_peer(sock), f"{case}: the PRM kept the connection open"
    found = [
        e
        for e in node.log_events("connection_dropped", after=offset)
        if str(port) in str(e.get("peer"))
    ]
    assert found, f"{case}: no connection_dropped warning for port {port}"
    assert all(e.get("level") == "warning" and e.get("reason") for e in found), found
    _still_commits(cluster)


def test_frame_replayed_inside_a_session_ends_it(cluster: Cluster) -> None:
    """The same frame twice on one connection (a duplicate seq): the second ends the session."""
    node = cluster.node(TARGET)
    offset = wire.log_offset(node)
    heartbeat = wire.frame(0, _p({"k": "catchup", "from": 0}))
    with wire.as_node(node, wire.tls_dir(cluster.root, SENDER)) as sock:
        sock.sendall(heartbeat + heartbeat)
        assert wire.closed_by_peer(sock)
    reasons = [str(e["reason"]) for e in node.log_events("connection_dropped", after=offset)]
    assert any("out of sequence" in r for r in reasons), reasons


def _other_ca(tmp_path: Path, node_id: int) -> Path:
    pki.issue(tmp_path / "stranger-ca", node_id, tmp_path / f"stranger-{node_id}")
    return tmp_path / f"stranger-{node_id}"


def _stranger_cases(cluster: Cluster, tmp_path: Path) -> dict[str, Path | None]:
    """Client credentials that must not get a session: none, another CA's, a non-member's."""
    pki.issue(cluster.root / "ca", 9, tmp_path / "non-member-9")  # the real CA, no such node
    return {
        "no_certificate": None,
        "another_ca_same_id": _other_ca(tmp_path, SENDER),
        "real_ca_not_a_member": tmp_path / "non-member-9",
    }


@pytest.mark.parametrize("case", ["no_certificate", "another_ca_same_id", "real_ca_not_a_member"])
def test_tls_client_without_a_member_certificate_is_refused(
    cluster: Cluster, tmp_path: Path, case: str
) -> None:
    node = cluster.node(TARGET)
    creds = _stranger_cases(cluster, tmp_path)[case]
    offset = wire.log_offset(node)
    ballot = node.status()["ballot"]
    try:
        with wire.as_node(node, creds) as sock:
            # In TLS 1.3 the client finishes first; the server checks its certificate after.
            sock.sendall(wire.frame(0, _p(HOSTILE_PREPARE)))
            assert wire.closed_by_peer(sock), f"{case}: the PRM kept the connection open"
    except OSError:
        pass  # refused during the handshake already
    wait_until(
        lambda: node.log_events("connection_refused", after=offset),
        f"{case}: a connection_refused warning",
        timeout=10,
    )
    assert node.status()["ballot"] == ballot
    _still_commits(cluster)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: paxmr\r\n\r\n",
        struct.pack(">I", 200) + os.urandom(200),
        wire.frame(0, _p(HOSTILE_PREPARE)),  # a well-formed frame, but not over TLS
    ],
    ids=["http", "random", "plain_frame"],
)
def test_plain_tcp_is_refused(cluster: Cluster, data: bytes) -> None:
    node = cluster.node(TARGET)
    ballot = node.status()["ballot"]
    with wire.plain(node) as sock:
        sock.sendall(data)
        assert wire.closed_by_peer(sock)
    assert node.status()["ballot"] == ballot
    _still_commits(cluster)


def test_truncated_frame_is_logged(cluster: Cluster) -> None:
    node = cluster.node(TARGET)
    valid = wire.frame(0, _p({"k": "catchup", "from": 0}))
    for cut in (2, 10, len(valid) - 1):
        offset = wire.log_offset(node)
        with wire.as_node(node, wire.tls_dir(cluster.root, SENDER)) as sock:
            port = sock.getsockname()[1]
            sock.sendall(valid[:cut])

        def logged(port: int = port, offset: int = offset) -> bool:
            found = node.log_events("frame_dropped", after=offset)
            return any(str(port) in str(e.get("peer")) for e in found)

        wait_until(logged, f"frame cut at {cut} bytes logged", timeout=5)
    _still_commits(cluster)


def test_refusals_are_logged_at_a_bounded_rate(cluster: Cluster) -> None:
    node = cluster.node(TARGET)
    offset = wire.log_offset(node)
    for _ in range(200):
        with wire.plain(node) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            wire.closed_by_peer(sock)
    # At most one line per reason every 10 s (earlier tests may have used this window up).
    assert len(node.log_events("connection_refused", after=offset)) <= 5
    assert any(
        "handshake failed" in str(e["reason"]) for e in node.log_events("connection_refused")
    )
    _still_commits(cluster)


def test_flood_of_hostile_connections_does_not_stop_the_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    node = cluster.node(TARGET)
    socks: list[socket.socket] = []
    try:
        # Connections left hanging (in the handshake or mid-frame) hold nothing up...
        for _ in range(40):
            s = wire.plain(node)
            s.sendall(b"\x16\x03\x01")  # the start of a TLS record, then nothing
            socks.append(s)
        # ...nor do many connections sending every kind of bad bytes at once.
        for _round in range(3):
            for data in CLOSED.values():
                s = wire.plain(node)
                s.sendall(data)
                socks.append(s)
        _still_commits(cluster)
        for n in cluster.nodes:
            n.replicate("small_reduced")
    finally:
        for s in socks:
            s.close()
    cluster.converged()
    done = cluster.node(TARGET).cli("replicate", "small_reduced")
    assert done.returncode == 0, done.stderr


def test_forged_prepare_from_another_ca_changes_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """Sent to every node: none promises the forged ballot, the leader keeps leading."""
    leader = cluster.leader()
    ballots = {n.id: n.status()["ballot"] for n in cluster.nodes}
    for n in cluster.nodes:
        claimed = n.id % 3 + 1
        forged = {"k": "prepare", "b": [2**61, claimed], "from": 0}
        try:
            with wire.as_node(n, _other_ca(tmp_path, claimed)) as sock:
                sock.sendall(wire.frame(0, wire.payload(forged, claimed, n.id)))
                assert wire.closed_by_peer(sock)
        except OSError:
            pass
    assert cluster.leader() == leader
    assert {n.id: n.status()["ballot"] for n in cluster.nodes} == ballots
    _still_commits(cluster)


def test_a_peer_whose_storage_went_back_is_refused(cluster: Cluster) -> None:
    """A hello from a follower whose stamp (its storage's nonce, with fewer writes than the
    leader saw from it: its storage went back in time, storage.py) ends the connection before
    any of its votes is read, logged with the reason. The leader, not another follower: it
    is the one that received the follower's votes (Accepted), so its stamp."""
    _still_commits(cluster)  # the followers voted: the leader saw them with writes
    leader = cluster.node(cluster.leader())
    sender = next(n for n in cluster.nodes if n.id != leader.id)
    db = sender.settings.state_dir / "prm.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        (nonce,) = conn.execute("SELECT value FROM meta WHERE key = 'nonce'").fetchone()
    offset = wire.log_offset(leader)
    hello = wire.hello(sender.id, leader.id, stamp=[nonce, 0])
    prepare = wire.payload(HOSTILE_PREPARE, sender.id, leader.id)
    with wire.as_node(leader, wire.tls_dir(cluster.root, sender.id)) as sock:
        sock.sendall(wire.frame(0, hello) + wire.frame(1, prepare))
        assert wire.closed_by_peer(sock)
    reasons = [str(e["reason"]) for e in leader.log_events("peer_refused", after=offset)]
    assert any("storage went back in time" in r for r in reasons), reasons
    assert leader.status()["ballot"][0] < 2**61  # the Prepare behind the hello was not read
    _still_commits(cluster)


def test_a_peer_showing_a_storage_it_replaced_is_refused() -> None:
    """A storage is never named again once its node replaced it (storage.py, `retired`): after
    the leader saw the follower's storage under a new nonce, a hello with the old one (a VM
    snapshot from before a lost disk or a demotion) ends the connection before any of its
    votes is read. Its own cluster: the leader's view of the follower is changed for good."""
    with running_cluster(tallies=True) as cluster:
        _still_commits(cluster)
        leader = cluster.node(cluster.leader())
        sender = next(n for n in cluster.nodes if n.id != leader.id)
        db = sender.settings.state_dir / "prm.db"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            (nonce,) = conn.execute("SELECT value FROM meta WHERE key = 'nonce'").fetchone()
        tls = wire.tls_dir(cluster.root, sender.id)
        newer = wire.hello(sender.id, leader.id, stamp=[nonce ^ 1, 0])
        with wire.as_node(leader, tls) as sock:  # the follower's storage replaced
            sock.sendall(wire.frame(0, newer))
        offset = wire.log_offset(leader)
        older = wire.hello(sender.id, leader.id, stamp=[nonce, 10**6])
        prepare = wire.payload(HOSTILE_PREPARE, sender.id, leader.id)
        with wire.as_node(leader, tls) as sock:
            sock.sendall(wire.frame(0, older) + wire.frame(1, prepare))
            assert wire.closed_by_peer(sock)
        reasons = [str(e["reason"]) for e in leader.log_events("peer_refused", after=offset)]
        assert any(f"is one node {sender.id} had replaced" in r for r in reasons), reasons
        assert leader.status()["ballot"][0] < 2**61  # the Prepare behind the hello was not read
