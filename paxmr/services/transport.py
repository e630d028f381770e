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
import collections
import hashlib
import hmac
import struct
from collections.abc import Callable

import msgpack

from paxmr import logs, paxos
from paxmr.settings import NodeAddress

TAG = 32
_HEADER = struct.Struct(">I")
RECONNECT_MIN, RECONNECT_MAX = 0.05, 1.0
CONNECT_TIMEOUT = 2.0
BODY_TIMEOUT = 30.0  # a frame's body must follow its length prefix within this time
INBOUND_PER_PEER = 4  # accepted connections allowed per cluster peer, to bound memory


class FrameError(Exception):
    """This frame cannot be accepted; the message says why (for the log, never the peer)."""


class AuthError(FrameError):
    """The frame was not made with the cluster key: its sender is not one of us."""


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
        raise AuthError("bad authentication tag (wrong cluster key?)")
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
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            return await reader.readexactly(length)
    except TimeoutError:
        raise FrameError(f"frame body not received within {BODY_TIMEOUT} s") from None


class Outbox:
    """Frames waiting for one peer, bounded in bytes: when the peer is down or slow, new frames
    are dropped (a lost message, as on a real network; Paxos retransmits what matters)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._frames: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()

    def put(self, frame: bytes) -> bool:
        if self.bytes + len(frame) > self.limit:
            return False
        self._frames.append(frame)
        self.bytes += len(frame)
        self._ready.set()
        return True

    async def take(self, most: int) -> list[bytes]:
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
        frames = [self._frames.popleft() for _ in range(min(most, len(self._frames)))]
        self.bytes -= sum(len(f) for f in frames)
        return frames


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
        self.outboxes = {p.id: Outbox(2 * frame_limit) for p in peers}
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
        outbox = self.outboxes.get(dst)
        if outbox is None:
            return
        frame = encode(self.key, self.me, dst, msg)
        if len(frame) - _HEADER.size > self.frame_limit:
            self.log.error("frame_too_large", peer=dst, bytes=len(frame), limit=self.frame_limit)
        elif not outbox.put(frame):
            self.log.debug("frame_not_queued", peer=dst, queued_bytes=outbox.bytes)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(self._inbound) >= INBOUND_PER_PEER * len(self.addresses):
            self.log.warning("connection_refused", peer=str(peer), reason="too many connections")
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._inbound[task] = writer
        try:
            while True:
                body = await read_frame(reader, self.frame_limit)
                try:
                    src, msg = decode(self.key, body, self.me)
                except AuthError as exc:
                    self.log.warning("frame_dropped", peer=str(peer), reason=str(exc))
                    return  # not one of us: stop listening to this connection
                except FrameError as exc:
                    self.log.warning("frame_dropped", peer=str(peer), reason=str(exc))
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
        outbox = self.outboxes[peer]
        delay = RECONNECT_MIN
        while True:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    _, writer = await asyncio.open_connection(address.host, address.port)
            except (OSError, TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_MIN
            self.connected.add(peer)
            self.log.info("peer_connected", peer=peer)
            try:
                while True:
                    frames = await outbox.take(256)
                    writer.writelines(frames)
                    await writer.drain()
            except (ConnectionError, OSError):
                self.log.info("peer_disconnected", peer=peer)
            finally:
                self.connected.discard(peer)
                writer.close()
