"""Hostile bytes on a PRM's peer port, with raw sockets: dropped, logged, and the cluster carries on.

A peer frame is ``length (4 bytes, big-endian) | HMAC-SHA256 tag (32) | msgpack payload`` where
the length counts tag and payload (see paxmr/services/transport.py). Everything here is built by
hand, not with the transport's encoder, so the test does not share its bugs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time
from collections.abc import Callable

import msgpack
import pytest

from .support import CONVERGE_S, Cluster, Node

pytestmark = pytest.mark.integration

TARGET = 1  # the node under attack; the others stay honest
WRONG_KEY = b"not-the-cluster-key-" + os.urandom(16).hex().encode()


def _frame(key: bytes, payload: bytes) -> bytes:
    tag = hmac.digest(key, payload, hashlib.sha256)
    return struct.pack(">I", len(tag) + len(payload)) + tag + payload


def _payload(msg: object, src: object = 2, dst: object = TARGET) -> bytes:
    packed: bytes = msgpack.packb({"src": src, "dst": dst, "msg": msg}, use_bin_type=True)
    return packed


# A real message kind that would hurt if it were believed: a Prepare with an enormous ballot
# would make the node promise it and refuse its real leader from then on.
HOSTILE_PREPARE = {"k": "prepare", "b": [2**61, 2], "from": 0}


def _connect(node: Node) -> socket.socket:
    me = next(a for a in node.settings.nodes if a.id == node.id)
    sock = socket.create_connection((me.host, me.port), timeout=10)
    sock.settimeout(10)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when the PRM hangs up on us (EOF or reset) within the socket's timeout."""
    try:
        while True:
            if not sock.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _warnings(node: Node, port: int) -> list[dict[str, object]]:
    events = node.log_events("frame_dropped") + node.log_events("connection_dropped")
    return [e for e in events if str(port) in str(e.get("peer"))]


def _logged(node: Node, port: int, timeout: float = 10.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while not (found := _warnings(node, port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _still_commits(cluster: Cluster) -> None:
    node = cluster.node(TARGET)
    before = node.status()["entries"]
    result = node.replicate("small_reduced")
    assert result["position"] >= before
    cluster.converged(timeout=CONVERGE_S)
    st = node.status()
    assert st["ballot"][0] < 2**61, "a forged Prepare was believed"
    assert st["stopped"] is False
    # The honest peers are still connected to and heard by the attacked node's leader.
    leader = cluster.node(cluster.leader())
    assert all(p["connected"] for p in leader.status()["peers"].values())


# name -> (bytes to send, does the PRM close the connection, event it logs)
def _cases(key: bytes) -> dict[str, tuple[bytes, bool, str]]:
    valid = _frame(key, _payload({"k": "catchup", "from": 0}))
    return {
        "http_garbage": (b"GET / HTTP/1.1\r\nHost: paxmr\r\n\r\n", True, "connection_dropped"),
        "random_garbage": (struct.pack(">I", 200) + os.urandom(200), True, "frame_dropped"),
        "oversized_limit_plus_one": (
            struct.pack(">I", (32 << 20) + 1) + b"x" * 64,
            True,
            "connection_dropped",
        ),
        "oversized_4gib": (b"\xff\xff\xff\xff" + b"x" * 64, True, "connection_dropped"),
        "length_shorter_than_tag": (struct.pack(">I", 16) + b"x" * 16, True, "connection_dropped"),
        "zero_length": (b"\x00\x00\x00\x00", True, "connection_dropped"),
        "wrong_key": (_frame(WRONG_KEY, _payload(HOSTILE_PREPARE)), True, "frame_dropped"),
        "zeroed_tag": (
            _frame(key, _payload(HOSTILE_PREPARE))[:4] + b"\x00" * 32 + _payload(HOSTILE_PREPARE),
            True,
            "frame_dropped",
        ),
        "valid_key_not_msgpack": (_frame(key, b"\xc1\xc1\xc1 not msgpack"), False, "frame_dropped"),
        "valid_key_not_a_map": (_frame(key, msgpack.packb([1, 2, 3])), False, "frame_dropped"),
        "valid_key_wrong_dst": (
            _frame(key, _payload(HOSTILE_PREPARE, dst=3)),
            False,
            "frame_dropped",
        ),
        "valid_key_src_not_int": (
            _frame(key, _payload(HOSTILE_PREPARE, src="2")),
            False,
            "frame_dropped",
        ),
        "valid_key_unknown_kind": (
            _frame(key, _payload({"k": "exec", "cmd": "rm -rf /"})),
            False,
            "frame_dropped",
        ),
        "valid_key_short_ballot": (
            _frame(key, _payload({"k": "prepare", "b": [1], "from": 0})),
            False,
            "frame_dropped",
        ),
        "valid_key_negative_slot": (
            _frame(key, _payload({"k": "accept", "b": [1, 2], "e": [[-1, ["r", b"v"]]], "c": 0})),
            False,
            "frame_dropped",
        ),
        "valid_key_huge_slot": (
            _frame(
                key, _payload({"k": "accept", "b": [1, 2], "e": [[2**63, ["r", b"v"]]], "c": 0})
            ),
            False,
            "frame_dropped",
        ),
        "valid_key_bool_as_int": (
            _frame(key, _payload({"k": "catchup", "from": True})),
            False,
            "frame_dropped",
        ),
        "valid_key_value_not_bytes": (
            _frame(key, _payload({"k": "forward", "id": "r", "v": "text, not bytes"})),
            False,
            "frame_dropped",
        ),
        "valid_key_missing_field": (
            _frame(key, _payload({"k": "nack", "b": [1, 2]})),
            False,
            "frame_dropped",
        ),
        "valid_frame_then_truncated": (valid + valid[: len(valid) // 2], True, "truncated"),
    }


CASES = sorted(_cases(b"k" * 32))


@pytest.mark.parametrize("case", CASES)
def test_bad_frame_is_dropped_and_logged_and_the_cluster_keeps_committing(
    cluster: Cluster, case: str
) -> None:
    node = cluster.node(TARGET)
    data, closes, event = _cases(node.settings.cluster_key())[case]
    with _connect(node) as sock:
        port = sock.getsockname()[1]
        sock.sendall(data)
        if event == "truncated":
            sock.shutdown(socket.SHUT_WR)  # the peer goes away mid-frame (logging: see below)
        if closes:
            assert _closed_by_peer(sock), f"{case}: the PRM kept the connection open"
        if event != "truncated":
            found = _logged(node, port)
            assert found, f"{case}: no frame_dropped/connection_dropped warning for port {port}"
            assert {e["event"] for e in found} == {event}, found
            assert all(e.get("level") == "warning" and e.get("reason") for e in found), found
        if not closes:
            # A malformed message in an authenticated frame drops only that frame.
            sock.sendall(_frame(node.settings.cluster_key(), _payload({"k": "bogus"})))
            deadline = time.monotonic() + 10
            while len(_warnings(node, port)) < 2:
                assert time.monotonic() < deadline, f"{case}: connection not read after the drop"
                time.sleep(0.05)
    _still_commits(cluster)


def test_truncated_frame_is_logged(cluster: Cluster) -> None:
    node = cluster.node(TARGET)
    valid = _frame(node.settings.cluster_key(), _payload({"k": "catchup", "from": 0}))
    for cut in (2, 20, len(valid) - 1):
        with _connect(node) as sock:
            port = sock.getsockname()[1]
            sock.sendall(valid[:cut])
        assert _logged(node, port, timeout=5), f"frame cut at {cut} bytes was not logged"
    _still_commits(cluster)


def test_flood_of_hostile_connections_does_not_stop_the_cluster(cluster: Cluster) -> None:
    node = cluster.node(TARGET)
    key = node.settings.cluster_key()
    cases = _cases(key)
    socks: list[socket.socket] = []
    try:
        # Connections left hanging mid-frame (a slow or dead attacker) hold nothing up...
        for _ in range(20):
            s = _connect(node)
            s.sendall(struct.pack(">I", 4096) + b"\x00" * 100)
            socks.append(s)
        # ...nor do many connections sending every kind of bad frame at once.
        for _round in range(3):
            for data, _closes, _event in cases.values():
                s = _connect(node)
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


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_forged_prepare_with_the_wrong_key_changes_nothing(cluster: Cluster) -> None:
    """Sent to every node: none promises the forged ballot, the leader keeps leading."""
    leader = cluster.leader()
    ballots = {n.id: n.status()["ballot"] for n in cluster.nodes}
    for n in cluster.nodes:
        with _connect(n) as sock:
            forged = {"k": "prepare", "b": [2**61, n.id % 3 + 1], "from": 0}
            sock.sendall(_frame(WRONG_KEY, _payload(forged, src=n.id % 3 + 1, dst=n.id)))
            assert _closed_by_peer(sock)
    assert _wait(lambda: all(n.log_events("frame_dropped") for n in cluster.nodes), 10)
    assert cluster.leader() == leader
    assert {n.id: n.status()["ballot"] for n in cluster.nodes} == ballots
    _still_commits(cluster)
