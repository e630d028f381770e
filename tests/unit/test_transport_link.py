"""Two real transports on loopback with mutual TLS: a frame goes straight to an idle connection,
and frames arrive in the order they were sent whichever way each went (straight, or queued for
the sender task: large ones, and those behind them)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgpack
import pytest
from structlog.testing import capture_logs

from paxmr import pki
from paxmr.paxos.messages import Forward, Message
from paxmr.services import transport
from paxmr.settings import TlsFiles
from paxmr.stamps import SESSIONS_KEPT, Stamp
from tests.support.peerlink import free_port, peer_transport

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

NONCE = 7


async def _until(done: Callable[[], bool]) -> None:
    for _ in range(1000):
        if done():
            return
        await asyncio.sleep(0.01)


async def _exchange(tmp: Path) -> None:
    ports = {1: free_port(), 2: free_port()}
    got: list[str] = []

    def deliver(_src: int, msg: Message) -> None:
        assert isinstance(msg, Forward)
        got.append(msg.request_id)

    one = peer_transport(tmp, 1, ports, lambda _src, _msg: None)
    two = peer_transport(tmp, 2, ports, deliver)
    await one.start("127.0.0.1", ports[1])
    await two.start("127.0.0.1", ports[2])
    try:
        async with asyncio.timeout(10):
            await _until(lambda: 2 in one.connected)
            await asyncio.sleep(0.05)  # its sender task waits for frames
            one.send(2, Forward("first", b"x"))
            assert one.outboxes[2].bytes == 0  # written at once, not queued
            sent = []
            for k in range(300):  # in one turn of the loop: large ones queue, and what follows
                size = 3 * transport.DIRECT_BYTES // 2 if k % 50 == 7 else 10
                sent.append(f"r{k}")
                one.send(2, Forward(f"r{k}", b"y" * size))
            for k in range(300, 400):  # across turns
                sent.append(f"r{k}")
                one.send(2, Forward(f"r{k}", b"z"))
                await asyncio.sleep(0)
            await _until(lambda: len(got) > len(sent))
        assert got == ["first", *sent]
    finally:
        for t in (one, two):
            await t.close()
            t.storage.close()


def test_frames_go_straight_or_queued_in_the_order_sent(tmp_path: Path) -> None:
    asyncio.run(_exchange(tmp_path))


async def _hello_then_message(
    tmp: Path, opens: object, stamp: tuple[int, int] = (NONCE, 0)
) -> tuple[list[object], bool, Stamp]:
    """Node 1's transport saw node 2's storage at 5 writes; a connection with node 2's real
    certificate sends a hello of that storage at `stamp` (0 writes: it went back) whose
    ``opens`` is `opens`, then a message at 9 writes. What node 1 delivered, whether it ended
    the connection, and its sighting of node 2 then."""
    ports = {1: free_port(), 2: free_port()}
    got: list[object] = []
    one = peer_transport(tmp, 1, ports, lambda _src, msg: got.append(msg))
    pki.issue(tmp / "ca", 2, tmp / "n2")
    d = tmp / "n2"
    tls = TlsFiles(d / pki.CA_FILE, d / pki.CERT_FILE, d / pki.KEY_FILE)
    one.storage.saw(2, Stamp(NONCE, 5, 77))
    await one.start("127.0.0.1", ports[1])
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                ports[1],
                ssl=transport.client_context(tls),
                server_hostname=pki.node_name(1),
            )
            hello = {"src": 2, "dst": 1, "hello": "c", "stamp": list(stamp), "opens": opens}
            writer.write(transport.frame(0, msgpack.packb(hello)))
            writer.write(transport.frame(1, transport.encode(2, 1, Forward("behind", b""), 9)))
            try:
                async with asyncio.timeout(3):
                    closed = await reader.read() == b""
            except TimeoutError:
                closed = False
            writer.close()
    finally:
        await one.close()
        one.storage.close()
    return got, closed, one.storage.seen[2]


@pytest.mark.parametrize(
    "opens",
    [
        [[77, 0], [78, 0]],  # well formed: refused as it always was
        [[0, 0]],  # a session 0
        [[n + 1, 0] for n in range(SESSIONS_KEPT + 1)],  # more sessions than this paxmr keeps
        "not a list",
    ],
)
def test_a_hello_that_cannot_be_read_lets_nothing_of_its_connection_in(
    tmp_path: Path, opens: object
) -> None:
    """The hello carries the checks (cluster, storage went back): a first frame that cannot be
    decoded ends the connection, so what follows is never delivered unchecked (it was: the
    hello was dropped like any bad frame and the messages after it delivered)."""
    got, closed, _ = asyncio.run(_hello_then_message(tmp_path, opens))
    assert got == []
    assert closed


def test_a_message_after_the_hello_is_a_sighting_in_the_hellos_session(tmp_path: Path) -> None:
    """The hello names the storage and its session; each message after it, its write count."""
    got, closed, seen = asyncio.run(_hello_then_message(tmp_path, [[76, 0], [77, 5]], (NONCE, 5)))
    assert got == [Forward("behind", b"")]
    assert not closed
    assert seen == Stamp(NONCE, 9, 77)


Dial = tuple[list[int], list[list[int]] | None]  # a hello's stamp (nonce, writes, session), opens


async def _late_frame_of_an_ended_run(
    tmp: Path,
    writes: int,
    old_hello: Dial = ([NONCE, 5, 77], [[77, 0]]),
    new_hello: Dial = ([NONCE, 6, 78], [[77, 0], [78, 6]]),
) -> tuple[list[object], bool]:
    """Node 2's run 77 connects to node 1 (hello at 5 writes); its storage is reverted to 6
    writes and run 78 connects (hello: run 77 ended at 6); then a frame of run 77 at `writes`
    arrives late on the first connection (or: hellos `old_hello` and `new_hello`). What node 1
    delivered, and whether it ended that connection."""
    ports = {1: free_port(), 2: free_port()}
    got: list[object] = []
    one = peer_transport(tmp, 1, ports, lambda _src, msg: got.append(msg))
    pki.issue(tmp / "ca", 2, tmp / "n2")
    d = tmp / "n2"
    tls = TlsFiles(d / pki.CA_FILE, d / pki.CERT_FILE, d / pki.KEY_FILE)
    await one.start("127.0.0.1", ports[1])

    async def dial(  # stamp: nonce, writes, session (the last of opens, on the wire)
        stamp: list[int], opens: list[list[int]] | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            ports[1],
            ssl=transport.client_context(tls),
            server_hostname=pki.node_name(1),
        )
        hello = {"src": 2, "dst": 1, "hello": "c", "stamp": stamp[:2], "opens": opens}
        writer.write(transport.frame(0, msgpack.packb(hello)))
        await _until(lambda: one.storage.seen.get(2) == Stamp(*stamp))  # the hello passed
        return reader, writer

    try:
        async with asyncio.timeout(10):
            old, old_writer = await dial(*old_hello)
            _, new_writer = await dial(*new_hello)
            late = transport.encode(2, 1, Forward("late", b""), writes)
            old_writer.write(transport.frame(1, late))
            try:
                async with asyncio.timeout(3):
                    closed = await old.read() == b""
            except TimeoutError:
                closed = False
            old_writer.close()
            new_writer.close()
    finally:
        await one.close()
        one.storage.close()
    return got, closed


def test_a_late_frame_of_an_ended_run_showing_writes_its_storage_lost_is_dropped(
    tmp_path: Path,
) -> None:
    """A frame that outlived its process and shows writes the storage no longer holds (its
    next run's hello, already accepted, says so) is not delivered: a promise the storage forgot
    would count. It was delivered, and its sighting noted, after the hello had passed."""
    got, closed = asyncio.run(_late_frame_of_an_ended_run(tmp_path, 9))
    assert got == []
    assert closed


def test_a_late_frame_of_an_ended_run_within_what_its_storage_holds_is_delivered(
    tmp_path: Path,
) -> None:
    got, closed = asyncio.run(_late_frame_of_an_ended_run(tmp_path, 6))
    assert got == [Forward("late", b"")]
    assert not closed


def test_a_late_frame_of_a_replaced_storage_of_a_peer_before_sessions_is_dropped(
    tmp_path: Path,
) -> None:
    """A paxmr before sessions (hellos without opens: session 0) whose storage was replaced
    (another nonce): a late frame of the old storage is not delivered, as from a paxmr with
    sessions. It was: both hellos' session 0 passed for "the same run"."""
    old: Dial = ([NONCE, 5, 0], None)
    got, closed = asyncio.run(
        _late_frame_of_an_ended_run(tmp_path, 5, old, ([NONCE + 1, 0, 0], None))
    )
    assert got == []
    assert closed


async def _closed(reader: asyncio.StreamReader, wait: float = 3) -> bool:
    try:
        async with asyncio.timeout(wait):
            return await reader.read() == b""
    except TimeoutError:
        return False


async def _hellos_read_out_of_order(
    tmp: Path, run: int, writes: int, hellos: tuple[int, int] = (0, 0)
) -> tuple[list[object], bool]:
    """Node 2's run 77 dialled node 1 (its hello at `hellos`[0] writes) and ended; run 78
    opened at `hellos`[1] writes and dialled too. Node 1 reads run 78's hello first, run 77's
    after it (delayed in the network: its segment lost and sent again), then a frame of `run`
    at `writes` on that run's connection. What node 1 delivered, and whether it ended that
    connection."""
    ports = {1: free_port(), 2: free_port()}
    got: list[object] = []
    one = peer_transport(tmp, 1, ports, lambda _src, msg: got.append(msg))
    pki.issue(tmp / "ca", 2, tmp / "n2")
    d = tmp / "n2"
    tls = TlsFiles(d / pki.CA_FILE, d / pki.CERT_FILE, d / pki.KEY_FILE)
    await one.start("127.0.0.1", ports[1])

    async def dial(
        writes: int, opens: list[list[int]]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            ports[1],
            ssl=transport.client_context(tls),
            server_hostname=pki.node_name(1),
        )
        hello = {"src": 2, "dst": 1, "hello": "c", "stamp": [NONCE, writes], "opens": opens}
        writer.write(transport.frame(0, msgpack.packb(hello)))
        return reader, writer

    def message() -> bytes:
        return transport.frame(1, transport.encode(2, 1, Forward("m", b""), writes))

    try:
        async with asyncio.timeout(20):
            new, new_writer = await dial(hellos[1], [[77, 0], [78, hellos[1]]])
            await _until(lambda: one.storage.seen.get(2) == Stamp(NONCE, hellos[1], 78))
            old, old_writer = await dial(hellos[0], [[77, 0]])
            if run == 77:
                old_writer.write(message())
                closed = await _closed(old)
            else:
                # Run 77's hello was read (its connection ended, or not within 3 s).
                await _closed(old)
                new_writer.write(message())
                closed = await _closed(new)
            old_writer.close()
            new_writer.close()
    finally:
        await one.close()
        one.storage.close()
    return got, closed


def test_a_hello_of_an_ended_run_read_late_lets_no_vote_its_storage_lost_in(
    tmp_path: Path,
) -> None:
    """Run 77 made 9 writes (a vote) after its hello; its storage went back to 0 writes and run
    78 opened there. Node 1 reads run 78's hello, then run 77's (0 writes: no revert shows in
    it), then run 77's vote: it must not count, as when the hellos came in order. It did: the
    frame was checked against the hello read last (run 77's own), not the newest run's."""
    got, closed = asyncio.run(_hellos_read_out_of_order(tmp_path, 77, 9))
    assert got == []
    assert closed


def test_a_hello_of_an_ended_run_read_late_leaves_the_live_run_connected(
    tmp_path: Path,
) -> None:
    """Run 78, live and healthy, makes its first write and sends a message: delivered, its
    connection kept. It was refused (dropped with its connection, "a run it does not record")
    because run 77's hello, read after run 78's, was taken as the newest."""
    got, closed = asyncio.run(_hellos_read_out_of_order(tmp_path, 78, 1))
    assert got == [Forward("m", b"")]
    assert not closed


def test_a_hello_of_an_ended_run_read_late_is_no_alarm(tmp_path: Path) -> None:
    """A healthy restart (run 77's hello at 5 writes, run 78 opened at 6) whose old hello is
    read late: its connection ends (the run ended: what it sent is stale), but the log does not
    say the node went back in time and must fence, an alarm an operator acts on. It did (run
    78's 6 writes, in a run run 77's hello does not record)."""
    with capture_logs() as logged:
        got, closed = asyncio.run(_hellos_read_out_of_order(tmp_path, 77, 5, (5, 6)))
    assert got == []
    assert closed
    reasons = [str(e.get("reason")) for e in logged if e["log_level"] == "warning"]
    assert reasons
    assert not [r for r in reasons if "went back" in r or "fence" in r], reasons
