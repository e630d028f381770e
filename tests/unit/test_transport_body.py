"""A frame's body must follow its length prefix within BODY_TIMEOUT: timed by the connection's
BodyWatch (one timer per connection), however many frames came before."""

from __future__ import annotations

import asyncio

import pytest

from paxmr.services import transport
from paxmr.services.transport import BodyWatch, FrameError, frame, read_frame

TIMEOUT = 0.3
LIMIT = 1 << 20


@pytest.fixture(autouse=True)
def _short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "BODY_TIMEOUT", TIMEOUT)


async def _frames_then_a_stall() -> None:
    reader = asyncio.StreamReader()
    watch = BodyWatch(reader.feed_eof)
    whole = frame(1, b"first")
    reader.feed_data(whole)
    assert await read_frame(reader, LIMIT, watch) == whole[4:]
    # A body that comes late after its prefix, but within the timeout of it: the timer armed
    # with the first frame fires meanwhile and must not end the connection.
    await asyncio.sleep(TIMEOUT * 0.6)
    second = frame(2, b"second")
    reader.feed_data(second[:4])
    asyncio.get_running_loop().call_later(TIMEOUT * 0.6, reader.feed_data, second[4:])
    assert await read_frame(reader, LIMIT, watch) == second[4:]
    # A prefix with no body: the read ends within about the timeout.
    reader.feed_data(frame(3, b"third")[:4])
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(TIMEOUT * 5):
        with pytest.raises(FrameError, match="frame body not received"):
            await read_frame(reader, LIMIT, watch)
    assert asyncio.get_running_loop().time() - started >= TIMEOUT * 0.9
    watch.close()


def test_a_body_must_follow_its_prefix_in_time() -> None:
    asyncio.run(_frames_then_a_stall())
