"""Bad requests on a real mapper's control socket: each gets an error reply, the service serves on."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from paxmr import control
from paxmr.local import load_state
from tests.support.local import Cluster, Node

pytestmark = pytest.mark.integration

LINE_LIMIT = 1 << 20  # the default limits.control_line_bytes of the local cluster


@pytest.fixture
def mapper(node: Node) -> Path:
    return node.settings.mapper_socket(1)


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def replies(sock: socket.socket) -> Iterator[dict[str, object]]:
    stream = sock.makefile("rb")
    while line := stream.readline():
        yield json.loads(line)


def ask(path: Path, raw: bytes) -> dict[str, object]:
    with connect(path) as sock:
        sock.sendall(raw)
        return next(replies(sock))


def error_code(reply: dict[str, object]) -> str:
    assert reply["ok"] is False, reply
    error = reply["error"]
    assert isinstance(error, dict)
    assert isinstance(error["message"], str)
    assert error["message"]
    return str(error["code"])


def still_serving(path: Path) -> None:
    assert control.call(path, "status", timeout=10) == {"role": "mapper", "id": 1}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"this is not json\n", "bad_request"),
        (b"\xff\xfe\x00garbage\n", "bad_request"),
        (b"\n", "bad_request"),
        (b"[1, 2]\n", "bad_request"),
        (b'"status"\n', "bad_request"),
        (b'{"args": {}}\n', "bad_request"),
        (b'{"op": 7}\n', "bad_request"),
        (b'{"op": "explode"}\n', "unknown_op"),
        (b'{"op": "__class__"}\n', "unknown_op"),
        (b'{"op": "map"}\n', "bad_args"),
        (b'{"op": "map", "args": {}}\n', "bad_args"),
        (b'{"op": "map", "args": {"file": "f"}}\n', "bad_args"),
        (
            b'{"op": "map", "args": {"file": "f", "offset": 0, "size": 1, "mode": "x"}}\n',
            "bad_args",
        ),
        (b'{"op": "map", "args": {"file": "f", "offset": "zero", "size": 1}}\n', "bad_args"),
        (b'{"op": "map", "args": [1, 2]}\n', "bad_args"),
        (b'{"op": "status", "args": {"verbose": true}}\n', "bad_args"),
        (b'{"op": "map", "args": {"file": "../x", "offset": 0, "size": 0}}\n', "path_refused"),
        (b'{"op": "map", "args": {"file": "absent", "offset": 0, "size": 0}}\n', "not_found"),
    ],
)
def test_bad_request_gets_error_reply(mapper: Path, raw: bytes, code: str) -> None:
    assert error_code(ask(mapper, raw)) == code
    still_serving(mapper)


def test_unknown_op_lists_known_ops(mapper: Path) -> None:
    reply = ask(mapper, b'{"op": "explode"}\n')
    assert "map, split, status" in str(reply["error"])


def test_missing_args_are_named(mapper: Path) -> None:
    reply = ask(mapper, b'{"op": "map", "args": {"file": "f"}}\n')
    message = str(reply["error"])
    assert "offset" in message
    assert "size" in message


def test_oversized_line(mapper: Path) -> None:
    with connect(mapper) as sock:
        # The service may hang up before it has read everything; its reply is there anyway.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b'{"op": "status", "pad": "' + b"x" * (LINE_LIMIT + 4096) + b'"}\n')
        reply = next(replies(sock))
    assert error_code(reply) == "too_large"
    still_serving(mapper)


def test_line_just_under_the_limit_is_served(mapper: Path) -> None:
    pad = b"x" * (LINE_LIMIT - 100)
    reply = ask(mapper, b'{"op": "status", "pad": "' + pad + b'"}\n')
    assert reply == {"ok": True, "result": {"role": "mapper", "id": 1}}


@pytest.mark.parametrize(
    "partial",
    [b'{"op": "sta', b"", b'{"op": "status"}'],
    ids=["half-line", "nothing", "no-newline"],
)
def test_client_disconnects_mid_request(mapper: Path, partial: bytes) -> None:
    with connect(mapper) as sock:
        sock.sendall(partial)
        sock.shutdown(socket.SHUT_WR)
    still_serving(mapper)


def test_client_disconnects_during_a_map(node: Node, mapper: Path) -> None:
    name = "abandoned_map.txt"
    (node.data / name).write_bytes(b"word " * 200_000)
    with connect(mapper) as sock:
        args = {"file": name, "offset": 0, "size": 1_000_000}
        sock.sendall(json.dumps({"op": "map", "args": args}).encode() + b"\n")
    still_serving(mapper)
    # And a full request right after works. (Another file: a second map of the same file while
    # the abandoned one still runs trips over the shared temp file, see test_tally.py.)
    (node.data / "after_abandon.txt").write_bytes(b"fine " * 10)
    args = {"file": "after_abandon.txt", "offset": 0, "size": 50}
    assert control.call(mapper, "map", args)["distinct"] == 1


def test_many_requests_on_one_connection_even_after_errors(mapper: Path) -> None:
    with connect(mapper) as sock:
        sock.sendall(b'{"op": "status"}\nnot json\n{"op": "nope"}\n{"op": "status"}\n')
        got = replies(sock)
        first, second, third, fourth = (next(got) for _ in range(4))
    assert first == fourth == {"ok": True, "result": {"role": "mapper", "id": 1}}
    assert error_code(second) == "bad_request"
    assert error_code(third) == "unknown_op"


def test_a_stalled_client_does_not_block_others(mapper: Path) -> None:
    with connect(mapper) as idle:
        idle.sendall(b'{"op": "sta')  # and then nothing
        still_serving(mapper)


def test_deeply_nested_json_gets_error_reply(mapper: Path) -> None:
    try:
        reply = ask(mapper, b"[" * 100_000 + b"]" * 100_000 + b"\n")
    finally:
        still_serving(mapper)
    assert error_code(reply) == "bad_request"


@pytest.mark.parametrize(
    "name",
    [
        "odd_names.txt/",
        "x" * 300,
        "a/" * 3000,
        "odd_names.txt\n",
        "a_directory",
    ],
    ids=["trailing-slash", "long-component", "long-path", "newline", "directory"],
)
def test_odd_file_names_get_a_clear_error(node: Node, mapper: Path, name: str) -> None:
    (node.data / "odd_names.txt").write_bytes(b"a b\n")
    (node.data / "a_directory").mkdir(exist_ok=True)
    with pytest.raises(control.RemoteError) as info:
        control.call(mapper, "map", {"file": name, "offset": 0, "size": 0})
    assert info.value.code in {"bad_args", "not_found", "path_refused"}, str(info.value)
    still_serving(mapper)


def test_reducer_long_name_gets_a_clear_error(node: Node) -> None:
    with pytest.raises(control.RemoteError) as info:
        control.call(node.settings.reducer_socket, "reduce", {"files": ["x" * 300 + "_I_1"]})
    assert info.value.code in {"bad_args", "not_found", "path_refused"}, str(info.value)


@pytest.mark.parametrize("service", ["mapper", "reducer", "prm"])
def test_a_lone_surrogate_in_a_name_is_a_clear_error(node: Node, service: str) -> None:
    s = node.settings
    path, op, args = {
        "mapper": (s.mapper_socket(1), "map", {"file": "bad\udcff", "offset": 0, "size": 0}),
        "reducer": (s.reducer_socket, "reduce", {"files": ["bad\udcff_I_1"]}),
        "prm": (s.prm_socket, "replicate", {"file": "bad\udcff_reduced"}),
    }[service]
    raw = json.dumps({"op": op, "args": args}).encode() + b"\n"  # ASCII JSON: "\udcff"
    reply = ask(path, raw)
    assert error_code(reply) == "bad_request"
    assert "not valid Unicode" in reply["error"]["message"]  # type: ignore[index]
    assert control.call(path, "status", timeout=10)


def test_a_name_that_is_not_utf8_from_the_shell(node: Node) -> None:
    result = node.cli("map", os.fsdecode(b"bad\xff.txt"))  # argv bytes -> "bad\udcff.txt"
    assert result.returncode == 1, result.stderr
    assert "not valid Unicode" in result.stderr
    assert "internal" not in result.stderr
    assert "Traceback" not in result.stderr


def open_files(cluster: Cluster, name: str) -> int:
    pid = next(s.pid for s in load_state(cluster.root) if s.node == 1 and s.name == name)
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def test_a_flood_of_idle_clients_leaves_the_service_reachable(
    cluster: Cluster, mapper: Path
) -> None:
    """1,100 idle connections (more than systemd's default 1,024 file descriptors): the service
    keeps at most limits.control_connections (256) of them and still answers a new client."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))
    flood: list[socket.socket] = []
    try:
        for _ in range(1100):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            flood.append(sock)
            sock.connect(str(mapper))  # blocking: waits while the backlog is full
        reply = control.call(mapper, "status", timeout=10)
        assert reply["role"] == "mapper"
        time.sleep(0.5)  # the last of the flood accepted (and the oldest dropped)
        assert open_files(cluster, "mapper-1") < 256 + 50
    finally:
        for sock in flood:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    still_serving(mapper)
