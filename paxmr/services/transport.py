"""The PRMs' peer transport: authenticated, length-prefixed msgpack frames over TCP.

A frame is ``length (4 bytes, big-endian) | HMAC-SHA256 tag (32) | payload``, where ``length``
counts tag and payload and the tag covers the payload under the cluster key. The payload is a
msgpack map ``{"src": id, "dst": id, "msg": ...}``; msgpack decodes to plain data only, and
``paxos.from_wire`` validates it, so nothing received is unpickled or evaluated. A frame that
is oversized, unauthenticated or malformed is dropped and logged. After a framing error the
stream cannot be trusted to resynchronise, so the connection is closed; others carry on.
Replayed frames are harmless: Paxos tolerates duplicated and reordered messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import struct
from collections.abc import Callable

import msgpack

from paxmr import logs, paxos
from paxmr.settings import NodeAddress

TAG = 32
_HEADER = struct.Struct(">I")
QUEUE_LIMIT = 10_000  # frames held for a peer that is down; beyond, new ones are dropped
RECONNECT_MIN, RECONNECT_MAX = 0.05, 1.0


class FrameError(Exception):
    """This frame cannot be accepted; the message says why (for the log, never the peer)."""


def encode(key: bytes, src: int, dst: int, msg: paxos.Message) -> bytes:
    payload: bytes = msgpack.packb(
        {"src": src, "dst": dst, "msg": paxos.to_wire(msg)}, use_bin_type=True
    )
    tag = hmac.digest(key, payload, hashlib.sha256)
    return _HEADER.pack(TAG + len(payload)) + tag + payload


def decode(key: bytes, body: bytes, me: int) -> tuple[int, paxos.Message]:
    """``body`` is a frame without its length prefix; returns (sender, message)."""
    tag, payload = body[:TAG], body[TAG:]
    if len(tag) != TAG or not hmac.compare_digest(tag, hmac.digest(key, payload, hashlib.sha256)):
        raise FrameError("bad authentication tag (wrong cluster key?)")
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise FrameError(f"undecodable payload: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("src"), int) or obj.get("dst") != me:
        raise FrameError("payload is not a frame for this node")
    try:
        return obj["src"], paxos.from_wire(obj.get("msg"))
    except paxos.BadMessage as exc:
        raise FrameError(f"bad message: {exc}") from exc


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if length > limit or length <= TAG:
        raise FrameError(f"frame length {length} outside (32, {limit}]")
    return await reader.readexactly(length)


Deliver = Callable[[int, paxos.Message], None]


class Transport:
    """Listens for peers and keeps one outgoing connection per peer, reconnecting with back-off."""

    def __init__(
        self, me: int, peers: list[NodeAddress], key: bytes, frame_limit: int, deliver: Deliver
    ) -> None:
        self.me = me
        self.key = key
        self.frame_limit = frame_limit
        self.deliver = deliver
        self.log = logs.get()
        self.addresses = {p.id: p for p in peers}
        self.queues: dict[int, asyncio.Queue[bytes]] = {
            p.id: asyncio.Queue(QUEUE_LIMIT) for p in peers
        }
        self.connected: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        # Accepted connections. On close they are aborted, not their tasks cancelled: Python 3.11's
        # streams report a cancelled connection handler as an "Exception in callback".
        self._inbound: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        self._tasks = [asyncio.create_task(self._sender(p)) for p in self.addresses]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._inbound.values():
            writer.transport.abort()
        await asyncio.gather(*self._tasks, *self._inbound, return_exceptions=True)

    def send(self, dst: int, msg: paxos.Message) -> None:
        queue = self.queues.get(dst)
        if queue is None:
            return
        with contextlib.suppress(asyncio.QueueFull):  # a lost message, as on a real network
            queue.put_nowait(encode(self.key, self.me, dst, msg))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        task = asyncio.current_task()
        assert task is not None
        self._inbound[task] = writer
        try:
            while True:
                body = await read_frame(reader, self.frame_limit)
                try:
                    src, msg = decode(self.key, body, self.me)
                except FrameError as exc:
                    self.log.warning("frame_dropped", peer=str(peer), reason=str(exc))
                    if "authentication" in str(exc):
                        return  # not one of us: stop listening to this connection
                    continue
                if src in self.addresses:
                    self.deliver(src, msg)
        except FrameError as exc:
            self.log.warning("connection_dropped", peer=str(peer), reason=str(exc))
        except asyncio.IncompleteReadError as exc:
            if exc.partial:  # closed in the middle of a frame, not between two
                self.log.warning("frame_dropped", peer=str(peer), reason="truncated frame")
        except ConnectionError:
            pass
        finally:
            self._inbound.pop(task, None)
            writer.close()

    async def _sender(self, peer: int) -> None:
        address = self.addresses[peer]
        queue = self.queues[peer]
        delay = RECONNECT_MIN
        while True:
            try:
                _, writer = await asyncio.open_connection(address.host, address.port)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_MIN
            self.connected.add(peer)
            self.log.info("peer_connected", peer=peer)
            try:
                while True:
                    frames = [await queue.get()]
                    while not queue.empty() and len(frames) < 256:
                        frames.append(queue.get_nowait())
                    writer.writelines(frames)
                    await writer.drain()
            except (ConnectionError, OSError):
                self.log.info("peer_disconnected", peer=peer)
            finally:
                self.connected.discard(peer)
                writer.close()
