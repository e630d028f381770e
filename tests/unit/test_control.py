"""The control server on a real Unix socket: connection cap, idle timeout, bad text."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from paxmr import cli, control, render, replies
from paxmr.settings import Settings


class Gate:
    """An op that holds its connection busy until the test opens the gate."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def run(self, _args: control.NoArgs, _progress: control.Progress) -> dict[str, Any]:
        await self.opened.wait()
        return {"gate": "passed"}


async def status(_args: control.NoArgs, _progress: control.Progress) -> dict[str, Any]:
    return {"role": "test"}


class Ranges(control.Result):
    ranges: list[tuple[int, int]]
    name: str


async def typed(_args: control.NoArgs, _progress: control.Progress) -> Ranges:
    return Ranges(ranges=[(0, 5), (5, 3)], name="x")


@asynccontextmanager
async def serving(
    tmp_path: Path, *, max_connections: int, idle_timeout: float, gate: Gate | None = None
) -> AsyncIterator[tuple[Path, control.Server]]:
    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(64)
    ops = {"status": control.Op(control.NoArgs, status), "typed": control.Op(control.NoArgs, typed)}
    if gate is not None:
        ops["wait"] = control.Op(control.NoArgs, gate.run)
    server = control.Server(
        ops, line_limit=4096, max_connections=max_connections, idle_timeout=idle_timeout
    )
    listener = await server.start(sock)
    try:
        yield path, server
    finally:
        listener.close()


async def request(path: Path, line: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(line)
    await writer.drain()
    reply = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    result: dict[str, Any] = json.loads(reply)
    return result


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def test_idle_clients_beyond_the_cap_do_not_lock_others_out(tmp_path: Path) -> None:
    async def test() -> None:
        async with serving(tmp_path, max_connections=8, idle_timeout=60) as (path, server):
            idle = [await asyncio.open_unix_connection(str(path)) for _ in range(40)]
            await asyncio.sleep(0.2)
            assert len(server.active) <= 8  # the oldest idle ones were dropped
            reply = await request(path, b'{"op":"status"}\n')
            assert reply == {"ok": True, "result": {"role": "test"}}
            for _, writer in idle:
                writer.close()

    run(test)


def test_busy_reply_when_every_connection_runs_a_request(tmp_path: Path) -> None:
    async def test() -> None:
        gate = Gate()
        async with serving(tmp_path, max_connections=2, idle_timeout=60, gate=gate) as (path, _):
            waiting = [asyncio.create_task(request(path, b'{"op":"wait"}\n')) for _ in range(2)]
            await asyncio.sleep(0.2)
            reply = await request(path, b'{"op":"status"}\n')
            assert reply["ok"] is False
            assert reply["error"]["code"] == "busy"
            gate.opened.set()
            assert [(await w)["result"] for w in waiting] == [{"gate": "passed"}] * 2
            reply = await request(path, b'{"op":"status"}\n')  # served again
            assert reply["ok"] is True

    run(test)


@pytest.mark.parametrize("sent", [b"", b'{"op":"sta'])
def test_idle_and_never_ending_requests_are_dropped(tmp_path: Path, sent: bytes) -> None:
    async def test() -> None:
        async with serving(tmp_path, max_connections=8, idle_timeout=0.3) as (path, server):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(sent)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            await asyncio.sleep(0.05)
            assert not server.active
            writer.close()

    run(test)


# A lone surrogate as an escape, in upper case, a high half without its pair, and in raw bytes
# (json decodes UTF-8 with surrogatepass): the server's quick check must miss none of them.
LONE_SURROGATES = [b'"\\udcff"', b'"\\uDCFF"', b'"a\\ud83d"', b'"\xed\xb3\xbf"']


@pytest.mark.parametrize("text", LONE_SURROGATES)
def test_lone_surrogate_is_a_clear_bad_request(tmp_path: Path, text: bytes) -> None:
    async def test() -> None:
        async with serving(tmp_path, max_connections=8, idle_timeout=60) as (path, _):
            reply = await request(path, b'{"op":"status","args":{"x":%s}}\n' % text)
            assert reply["error"]["code"] == "bad_request"
            assert "not valid Unicode" in reply["error"]["message"]
            assert (await request(path, b'{"op":"status"}\n'))["ok"] is True

    run(test)


ESCAPES = "\x1b[2J\x1b]0;pwned\x07\x9b31m\u202etxt\x7f"


def test_error_messages_never_carry_control_characters(tmp_path: Path) -> None:
    async def test() -> None:
        async with serving(tmp_path, max_connections=8, idle_timeout=60) as (path, _):
            op = json.dumps({"op": ESCAPES}).encode() + b"\n"
            message = (await request(path, op))["error"]["message"]
            assert not any(c in message for c in "\x1b\x07\x9b\u202e\x7f")
            assert "\\x1b[2J" in message

    run(test)


def test_text_output_escapes_counted_words_and_names() -> None:
    merged = render.merged(
        {"positions": [0], "total": 3, "distinct": 2, "words": [[ESCAPES, 2], ["plain", 1]]}
    )
    shown = render.log(
        {
            "entries": [{"position": 0, "file": ESCAPES, "node": 1, "words": 3, "distinct": 2}],
            "digest": "00",
        }
    )
    line = render.log_line({"event": "merge", "top": [[ESCAPES, 2]]})
    for text in (merged, shown, line):
        assert not any(c in text for c in "\x1b\x07\x9b\u202e\x7f"), text
        assert "\\x1b[2J" in text
    assert "plain" in merged


@pytest.mark.parametrize(
    "unit", ["paxmr-mapper@.service", "paxmr-reducer.service", "paxmr-prm.service"]
)
def test_units_bound_open_files_above_the_connection_cap(unit: str) -> None:
    from paxmr.settings import Limits  # noqa: PLC0415

    units = Path(__file__).parents[2] / "systemd"
    # The unit and the drop-in every paxmr-*.service shares.
    text = (units / unit).read_text() + (units / "paxmr-.service.d/10-hardening.conf").read_text()
    limits = [line for line in text.splitlines() if line.startswith("LimitNOFILE=")]
    assert len(limits) == 1, unit
    assert int(limits[0].split("=")[1]) >= 2 * Limits().control_connections


def test_a_typed_result_is_sent_as_its_json_object(tmp_path: Path) -> None:
    async def test() -> None:
        async with serving(tmp_path, max_connections=8, idle_timeout=60) as (path, _):
            reply = await request(path, b'{"op":"typed"}\n')
            assert reply == {"ok": True, "result": {"ranges": [[0, 5], [5, 3]], "name": "x"}}

    run(test)


class Named(control.Result):
    name: str  # a client of an older version: it knows fewer keys than the service sends


def test_a_client_validates_a_reply_against_its_model(tmp_path: Path) -> None:
    async def test() -> None:
        async with serving(tmp_path, max_connections=8, idle_timeout=60) as (path, _):
            got = await asyncio.to_thread(control.call, path, "typed", reply=Ranges)
            assert got == Ranges(ranges=[(0, 5), (5, 3)], name="x")
            # Keys it does not know are ignored (a newer service during a rolling deploy).
            assert await asyncio.to_thread(control.call, path, "typed", reply=Named) == Named(
                name="x"
            )
            # A reply that lacks what the model needs is a clear error, not a KeyError later.
            with pytest.raises(control.RemoteError, match="ranges: Field required") as caught:
                await asyncio.to_thread(control.call, path, "status", reply=Ranges)
            assert caught.value.code == "bad_reply"

    run(test)


def test_status_names_a_service_whose_reply_this_cli_cannot_read(tmp_path: Path) -> None:
    """`paxmr status` against a service of another version: a clear state and exit 1."""
    settings = Settings(runtime_dir=tmp_path, mappers=1)

    async def wrong(_args: control.NoArgs, _progress: control.Progress) -> dict[str, Any]:
        return {"role": "mapper"}  # no "id": not what this version's MapperStatus needs

    async def reducer(_args: control.NoArgs, _progress: control.Progress) -> dict[str, Any]:
        return {"role": "reducer"}

    async def prm(_args: control.NoArgs, _progress: control.Progress) -> replies.PrmStatus:
        usage = replies.LogUsage(bytes=0, bytes_quota=None, entries=0, entries_quota=None,
                                 full=False, heavy_running=0)  # fmt: skip
        return replies.PrmStatus(
            role="leader", leader=1, ballot=(1, 1), stopped=False, voting=True, slots=0,
            entries=0, digest="00", problems=[], uptime_s=1.0, node=1, healthy=True, behind=0,
            quorum=2, in_flight=0, pending=0, log=usage, peers={},
        )  # fmt: skip

    async def test() -> None:
        listeners = []
        for path, op in [(settings.mapper_socket(1), wrong), (settings.reducer_socket, reducer),
                         (settings.prm_socket, prm)]:  # fmt: skip
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            sock.listen(8)
            server = control.Server({"status": control.Op(control.NoArgs, op)}, line_limit=4096)
            listeners.append(await server.start(sock))
        try:
            report = await asyncio.to_thread(cli._gather_status, settings)
        finally:
            for listener in listeners:
                listener.close()
        assert report["services"]["reducer"] == "up"
        assert "bad reply" in report["services"]["mapper-1"]
        assert "id: Field required" in report["services"]["mapper-1"]
        assert report["services"]["prm"] == "up"
        assert report["exit_code"] == cli.EXIT_ERROR  # the replica is healthy, a mapper is not

    run(test)


def test_a_service_that_hangs_up_on_an_unread_request_is_disconnected(tmp_path: Path) -> None:
    """A service that closes a connection without reading the request or writing a line (it
    stops, or dies, as the request arrives): the kernel answers the client's read with
    ECONNRESET (a Unix socket closed with unread data). That is "disconnected", as an EOF is: a
    replicate's outcome is then unknown and names its request id (jobs.py), and `paxmr status`
    lists the service as not answering instead of failing whole. It raised ConnectionResetError."""
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def hang_up() -> None:
        conn, _ = server.accept()
        conn.recv(1, socket.MSG_PEEK)  # the request came: left unread
        conn.close()

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        with pytest.raises(control.RemoteError) as raised:
            control.call(path, "status", timeout=5.0)
        assert raised.value.code == "disconnected"
    finally:
        thread.join()
        server.close()
