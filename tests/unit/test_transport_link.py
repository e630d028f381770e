"""Two real transports on loopback with mutual TLS: a frame goes straight to an idle connection,
and frames arrive in the order they were sent whichever way each went (straight, or queued for
the sender task: large ones, and those behind them)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from paxmr.paxos.messages import Forward, Message
from paxmr.services import transport
from tests.support.peerlink import free_port, peer_transport

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


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
