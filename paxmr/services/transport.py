"""The PRMs' peer transport: mutual TLS 1.3, then length-prefixed msgpack frames.

Authentication is TLS with the cluster's own CA (paxmr/pki.py): both ends present a certificate
that names a node id (``paxmr-node-<id>``). The dialling side checks the name of the node it
called (hostname check); the listening side takes the sender's id from the certificate, and
every frame's ``src`` must equal it. There are no session tickets, so every connection makes a
full handshake with fresh keys: recorded bytes replayed on a new connection fail the handshake,
and TLS refuses replayed or reordered records inside a session.

A frame is ``length (4 bytes) | seq (8 bytes) | payload`` (big-endian), where ``length`` counts
seq and payload and the payload is a msgpack map ``{"src": id, "dst": id, "msg": ..., "w":
writes}``, ``w`` the sender's storage's count of durable writes when it sent the message. ``seq``
counts the frames of one connection from 0; a frame out of sequence ends the connection (TLS
rules this out on the wire already; the check keeps a duplicated message from ever reaching the
core, whatever a sender does).
The first frame of a connection may be a hello, ``{"src": id, "dst": id, "hello": cluster id}``,
which the dialling side always sends: a node whose storage records another cluster's id than the
listener's (a member re-founded by mistake with ``paxmr init --found``, another cluster under
the same CA) is refused, once per connection, with a log line naming both ids. A first frame
that cannot be decoded ends the connection (it would be the hello: what follows it would skip
its checks); a later one is dropped, the connection kept. A node without an
identity (it joined, or lost its disk) sends an empty id and is let in: it votes only after it
has fenced. So the hello keeps honest but wrong nodes apart; it is no defence against a holder of
a valid certificate, which could send the right id or none. A hello that asks (``"ask": true``,
from ``ask_cluster``, which ``paxmr init --found`` runs first) gets the listener's own hello back
with its log's length, then the connection ends.
A hello also carries the stamps that show a storage that went back in time (paxmr/storage.py):
the sender's own nonce and write count, the highest stamp it saw from the receiver and the
receiver's nonces it saw replaced. Stamps name the open of the storage they were made in
(its session): a hello carries the sender's storage's latest sessions, each with the write
count it opened at (``"opens"``, the last one the stamp's), and the session of the stamp it
saw of the receiver (``"ss"``); a paxmr before sessions ignores both keys, and one that
sends neither is compared by its write count alone (stamps.went_back). A listener refuses a
peer whose stamp shows it went back from what it saw of it, or is of a nonce it saw replaced,
and a stamp of its own that it does not reach, or a nonce of its own shown replaced, tells it
that its own storage went back (`behind`). With the
messages it sends a peer, a node relays what it saw itself of the other nodes and has not told
that peer yet since it connected (their stamps and replaced nonces, under the key ``"r"`` of a
message frame, which a paxmr before relays ignores, and their stamps' sessions under ``"rs"``,
which a paxmr before sessions ignores), so those who did not receive a node's votes know of
them too.
msgpack decodes to plain data only, with size and structure limits, and ``paxos.from_wire``
validates it, so nothing received is unpickled or evaluated. Frames over ``DECODE_INLINE``
bytes are decoded in a worker thread so heartbeats keep flowing.

Nothing before authentication costs more than a small, bounded amount: an accepted connection
must finish its handshake within ``HANDSHAKE_TIMEOUT``; connections still in their handshake
are capped per source address and in total, and a new connection over a cap is admitted by
dropping a *random* one of those in their handshake (of its own address first), so idle or slow
clients can never keep a real peer out: a real peer's handshake takes milliseconds, and it
survives a flood of churning connections with high probability (dropping the oldest instead
would let a fast enough flood drop every real handshake). Only an authenticated
connection counts against its peer's slots. Refusals are logged at most once per
``REFUSAL_LOG_EVERY`` seconds per reason, with a count of what was suppressed.
"""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import msgpack

from paxmr import logs, paxos, pki
from paxmr.services import unpack
from paxmr.settings import NodeAddress, TlsFiles
from paxmr.stamps import SESSIONS_KEPT, Sessions, Stamp, ended, from_ended_run
from paxmr.storage import Storage

_LENGTH = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
RECONNECT_MIN, RECONNECT_MAX = 0.05, 1.0
CONNECT_TIMEOUT = 2.0  # TCP connect plus TLS handshake, dialling out
# An outgoing connection whose sent data goes unacknowledged this long is ended by the kernel
# (TCP_USER_TIMEOUT) and dialled again. Without it a cut link (packets dropped, no reset) lived
# until TCP gave up (tcp_retries2: about 15 minutes), and after the heal carried data again only
# at TCP's next retransmission, whose back-off doubles up to 120 s: 97 s of deafness after a
# 2-minute cut in CI, 94 s after one on loopback (tests/support/peerlink.py; now 0.1 s). The peer's
# kernel acknowledges even while its process is stalled, but only what fits its receive buffer:
# past it the window is zero, and data left unsent that long ends the connection too (tcp(7)). So
# a process stopped 5 s with megabytes unread (SIGSTOP, a long stall) loses its leader's link; it
# is dialled again and catches up (test_large's frozen follower: 1.7 s after SIGCONT). 5 s is 25
# of TCP's shortest retransmission timeouts, far above any delay of a working network.
# An idle link is not timed (nothing is unacknowledged): a message sent after the heal goes at
# once. A dropped connection costs a redial and the messages in flight, which Paxos resends.
UNACKED_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 3.0  # from accept to a verified peer certificate
BODY_TIMEOUT = 30.0  # a frame's body must follow its length prefix within this time
INBOUND_PER_PEER = 4  # authenticated connections kept per peer; a newer one replaces the oldest
PENDING_PER_SOURCE = 32  # connections in their handshake per source address
PENDING_MAX = 128  # connections in their handshake in total
DECODE_INLINE = 64 * 1024  # larger frames are decoded in a worker thread
# Bytes a peer's frames may go straight to its connection between two drains (Outbox); past it,
# they queue for the sender task, as large frames do.
DIRECT_BYTES = 256 * 1024
REFUSAL_LOG_EVERY = 10.0  # seconds
# Structure limits for msgpack: no message has more keys, longer strings or longer arrays.
MAX_MAP_LEN = 16
MAX_STR_LEN = 4096
MAX_ARRAY_LEN = paxos.messages.MAX_BATCH
MAX_DEPTH = 8
# Objects in one large frame (decoded by paxmr/services/unpack.py in a worker): an entry of an
# Accept, Promise or Entries message is at most 7 objects, and a batch has at most MAX_BATCH.
MAX_OBJECTS = 8 * paxos.messages.MAX_BATCH


class FrameError(Exception):
    """This frame cannot be accepted; the message says why (for the log, never the peer)."""


class AuthError(FrameError):
    """The connection is not from the cluster node it claims to be."""


class OtherCluster(AuthError):
    """The connection's hello names another cluster."""


class Asked(FrameError):
    """The connection's hello asks what cluster this node belongs to (ask_cluster)."""


class WentBack(AuthError):
    """The connection's hello shows that its sender's storage, or this node's, went back."""


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame of a connection: the sender's cluster id ("" if it has none), its
    storage's `stamp` and latest opens (`sessions`), the highest stamp it has `seen` from the
    receiver and the receiver's nonces it saw `retired` (see the module's text). `ask` asks
    the listener for its own hello and hangs up; that answer also tells the listener's log's
    `length`, the `voters` of its newest epoch and the cluster's `founders` (if its storage
    records them)."""

    cluster: str
    ask: bool = False
    length: int | None = None
    stamp: Stamp | None = None
    seen: Stamp | None = None
    voters: tuple[int, ...] | None = None
    founders: tuple[int, ...] | None = None
    retired: tuple[int, ...] = ()
    sessions: Sessions = ()  # the sender's storage's latest opens (stamps.went_back)


class Relayed(NamedTuple):
    """What the sender saw of another `node`: its storage's highest stamp and the nonces it saw
    it replace (see the module's text)."""

    node: int
    stamp: Stamp
    retired: tuple[int, ...]


# --- TLS --------------------------------------------------------------------------------------


def _context(purpose: int, files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_TICKET  # no resumption: every connection authenticates afresh
    ctx.load_verify_locations(cafile=str(files.ca))  # may hold old and new CA during a rotation
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def server_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, files)
    ctx.check_hostname = False  # the client's node id is read from its certificate instead
    ctx.num_tickets = 0  # TLS 1.3 issues session tickets unless told not to
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, files)
    ctx.check_hostname = True  # the server must be the node dialled: paxmr-node-<id>
    return ctx


def peer_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> int | None:
    """The node id named by a verified peer certificate (DNS subjectAltName paxmr-node-<id>)."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return None
    sans: tuple[tuple[str, str], ...] = cert.get("subjectAltName", ())  # type: ignore[assignment]
    names = [value for kind, value in sans if kind == "DNS"]
    return pki.node_id_of(names)


# --- frames -----------------------------------------------------------------------------------


def encode(
    src: int, dst: int, msg: paxos.Message, writes: int, relay: Sequence[Relayed] = ()
) -> bytes:
    """The payload of a frame (``frame`` adds length and sequence number)."""
    obj: dict[str, object] = {"src": src, "dst": dst, "msg": paxos.to_wire(msg), "w": writes}
    if relay:
        obj["r"] = [[r.node, r.stamp.nonce, r.stamp.writes, list(r.retired)] for r in relay]
        # Apart from the rows, whose length a paxmr before sessions checks (it drops the frame).
        obj["rs"] = [r.stamp.session for r in relay]
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    return payload


def hello(src: int, dst: int, msg: Hello) -> bytes:
    """The payload of a connection's first frame (see the module docstring)."""
    obj: dict[str, object] = {"src": src, "dst": dst, "hello": msg.cluster}
    if msg.ask:
        obj["ask"] = True
    if msg.length is not None:
        obj["length"] = msg.length
    if msg.stamp is not None:
        obj["stamp"] = [msg.stamp.nonce, msg.stamp.writes]
    if msg.sessions:  # the last one is the stamp's
        obj["opens"] = [list(pair) for pair in msg.sessions]
    if msg.seen is not None:
        obj["seen"] = [msg.seen.nonce, msg.seen.writes]
        if msg.seen.session:
            obj["ss"] = msg.seen.session
    if msg.voters is not None:
        obj["voters"] = list(msg.voters)
    if msg.founders is not None:
        obj["founders"] = list(msg.founders)
    if msg.retired:
        obj["retired"] = list(msg.retired)
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    return payload


def frame(seq: int, payload: bytes) -> bytes:
    return _LENGTH.pack(_SEQ.size + len(payload)) + _SEQ.pack(seq) + payload


class Frame(NamedTuple):
    src: int  # as the sender claims
    seq: int
    msg: paxos.Message | Hello
    writes: int | None = None  # the sender's storage's durable writes (a message's frame)
    relay: tuple[Relayed, ...] = ()  # what the sender saw of other nodes (a message's frame)


def _u63(n: object) -> bool:
    """An integer SQLite stores as it is: a nonce, a session or a write count."""
    return type(n) is int and 0 <= n < 2**63


def _stamp(obj: object) -> Stamp | None:
    if obj is None:
        return None
    if not isinstance(obj, list) or len(obj) != 2 or not all(map(_u63, obj)):
        raise FrameError("a hello with a bad stamp")
    return Stamp(*obj)


def _sessions(obj: object) -> Sessions:
    if obj is None:
        return ()
    if (
        not isinstance(obj, list)
        or not 0 < len(obj) <= SESSIONS_KEPT
        or not all(
            isinstance(pair, list)
            and len(pair) == 2  # a session and the count it opened at
            and all(map(_u63, pair))
            and pair[0]
            for pair in obj
        )
    ):
        raise FrameError("a hello with a bad list of sessions")
    return tuple((session, start) for session, start in obj)


def _nonces(obj: object, where: str) -> tuple[int, ...]:
    if obj is None:
        return ()
    if not isinstance(obj, list) or not all(map(_u63, obj)):
        raise FrameError(f"{where} with a bad list of retired nonces")
    return tuple(obj)


def _relayed(obj: object) -> Relayed:
    if not isinstance(obj, list) or len(obj) != 4 or type(obj[0]) is not int:
        raise FrameError("a relay with a bad row")
    if not 0 < obj[0] < 2**16:
        raise FrameError("a relay with a bad node id")
    stamp = _stamp(obj[1:3])
    assert stamp is not None
    return Relayed(obj[0], stamp, _nonces(obj[3], "a relay"))


def _relay(rows: object, sessions: object) -> tuple[Relayed, ...]:
    """A message frame's relay: its rows, and their stamps' sessions (none from a paxmr
    before sessions)."""
    if not isinstance(rows, list):
        raise FrameError("a relay without rows")
    relay = tuple(_relayed(row) for row in rows)
    if sessions is None:
        return relay
    if not isinstance(sessions, list) or len(sessions) != len(relay):
        raise FrameError("a relay with a bad list of sessions")
    if not all(map(_u63, sessions)):
        raise FrameError("a relay with a bad session")
    return tuple(
        r._replace(stamp=replace(r.stamp, session=n)) for r, n in zip(relay, sessions, strict=True)
    )


def _nodes(obj: object) -> tuple[int, ...] | None:
    if obj is None:
        return None
    if not isinstance(obj, list) or not all(type(n) is int and 0 < n < 2**16 for n in obj):
        raise FrameError("a hello with a bad node list")
    return tuple(obj)


def _hello(obj: dict[str, Any]) -> Hello:
    cluster, ask, length = obj["hello"], obj.get("ask", False), obj.get("length")
    if not isinstance(cluster, str) or type(ask) is not bool:
        raise FrameError("a hello without a cluster id")
    if length is not None and (type(length) is not int or length < 0):
        raise FrameError("a hello with a bad log length")
    stamp, seen = _stamp(obj.get("stamp")), _stamp(obj.get("seen"))
    sessions, seen_session = _sessions(obj.get("opens")), obj.get("ss", 0)
    if not _u63(seen_session):
        raise FrameError("a hello with a bad session")
    if stamp is not None and sessions:
        stamp = replace(stamp, session=sessions[-1][0])
    if seen is not None:
        seen = replace(seen, session=seen_session)
    voters, founders = _nodes(obj.get("voters")), _nodes(obj.get("founders"))
    retired = _nonces(obj.get("retired"), "a hello")
    return Hello(cluster, ask, length, stamp, seen, voters, founders, retired, sessions)


def decode(body: bytes, me: int, limit: int) -> Frame:
    """``body`` is a frame without its length prefix."""
    (seq,) = _SEQ.unpack_from(body)
    payload = memoryview(body)[_SEQ.size :]
    try:
        if len(payload) <= DECODE_INLINE:  # C decoder: fast, bounded by the size
            obj = msgpack.unpackb(
                payload,
                raw=False,
                strict_map_key=True,
                use_list=True,
                max_bin_len=limit,
                max_str_len=MAX_STR_LEN,
                max_array_len=MAX_ARRAY_LEN,
                max_map_len=MAX_MAP_LEN,
                max_ext_len=0,
            )
        else:  # plain Python, bounded in objects and depth, lets the loop run (see unpack.py)
            obj = unpack.unpack(
                payload,
                max_objects=MAX_OBJECTS,
                max_depth=MAX_DEPTH,
                max_str_len=MAX_STR_LEN,
                max_bin_len=limit,
                max_container_len=MAX_ARRAY_LEN,
            )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise FrameError(f"undecodable payload: {exc}") from exc
    if not isinstance(obj, dict) or type(obj.get("src")) is not int or obj.get("dst") != me:
        raise FrameError("payload is not a frame for this node")
    if "hello" in obj:
        return Frame(obj["src"], seq, _hello(obj))
    writes = obj.get("w")  # None from a paxmr before stamps: nothing to note then
    if writes is not None and not _u63(writes):
        raise FrameError("a message with a bad write count")
    relay = _relay(obj.get("r", []), obj.get("rs"))
    try:
        return Frame(obj["src"], seq, paxos.from_wire(obj.get("msg")), writes, relay)
    except paxos.BadMessage as exc:
        raise FrameError(f"bad message: {exc}") from exc


class Truncated(FrameError):
    """The connection ended in the middle of a frame."""


class BodyWatch:
    """Ends a connection whose frame body does not follow its length prefix within
    BODY_TIMEOUT (read_frame): one timer per connection, moved on only when it fires. A timer
    armed and cancelled around every body (asyncio.timeout) cost 15-25 us per peer message."""

    def __init__(self, end: Callable[[], None]) -> None:
        self._end = end  # aborts the connection: its read ends
        self.since: float | None = None  # a body is awaited since then (loop time)
        self.expired = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.since = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self.since + BODY_TIMEOUT, self._due)

    def _due(self) -> None:
        self._timer = None
        if self.since is None:
            return  # between frames: the next body arms it again (start)
        due = self.since + BODY_TIMEOUT
        loop = asyncio.get_running_loop()
        if loop.time() < due:
            self._timer = loop.call_at(due, self._due)
        else:
            self.expired = True
            self._end()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def read_frame(reader: asyncio.StreamReader, limit: int, watch: BodyWatch | None) -> bytes:
    """The next frame's body. Its length prefix may wait forever; the body must follow it
    within BODY_TIMEOUT, timed by `watch` (the connection's). None: the caller bounds the
    whole read itself (ask_cluster's answer, within CONNECT_TIMEOUT)."""
    try:
        header = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise Truncated("truncated frame") from None
        raise
    (length,) = _LENGTH.unpack(header)
    if length > limit + _SEQ.size or length <= _SEQ.size:
        raise FrameError(f"frame length {length} outside ({_SEQ.size}, {limit + _SEQ.size}]")
    if watch is not None:
        watch.start()
    try:
        return await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ssl.SSLError, ConnectionError):
        if watch is not None and watch.expired:
            raise FrameError(f"frame body not received within {BODY_TIMEOUT} s") from None
        raise Truncated("truncated frame") from None
    finally:
        if watch is not None:
            watch.since = None


class Outbox:
    """Frames waiting for one peer, bounded in bytes: when the peer is down or slow, new frames
    are dropped (a lost message, as on a real network; Paxos retransmits what matters).

    While the peer's connection is up and nothing waits here, a frame goes straight to it
    (`link`) instead: the sender task, woken in the loop's next turn, wrote it only after the
    driver had handed its commit to a worker thread, whose Python then held the GIL. That cost
    a sequential replicate 0.1-0.2 ms on the leader's Accept and again on each follower's
    Accepted (timestamps in the PRMs under paxmr bench replicate), and a task wake-up each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._payloads: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()
        self.link: _Link | None = None  # the connection, while its sender task waits here

    def put(self, payload: bytes) -> bool:
        if not self._payloads and self.link is not None and self.link.write_now(payload):
            return True
        if self.bytes + len(payload) > self.limit:
            return False
        self._payloads.append(payload)
        self.bytes += len(payload)
        self._ready.set()
        return True

    async def take(self, most: int) -> list[bytes]:
        while not self._payloads:
            self._ready.clear()
            await self._ready.wait()
        taken = [self._payloads.popleft() for _ in range(min(most, len(self._payloads)))]
        self.bytes -= sum(len(p) for p in taken)
        return taken


class _Link:
    """One outgoing connection: its writer and the next frame's sequence number."""

    def __init__(self, writer: asyncio.StreamWriter, limit: int) -> None:
        self.writer = writer
        self.seq = 1  # after the hello
        self.limit = limit  # bytes written straight since the last drain, at most
        self.undrained = 0

    def write(self, payloads: list[bytes]) -> None:
        self.writer.writelines(frame(self.seq + i, p) for i, p in enumerate(payloads))
        self.seq += len(payloads)

    def write_now(self, payload: bytes) -> bool:
        """Write a frame at once, unless the connection is closing or `limit` bytes went so
        since the sender task last drained it: then it queues, and that task writes, drains
        (its back-pressure) and finds a broken connection."""
        if self.writer.transport.is_closing() or self.undrained + len(payload) > self.limit:
            return False
        self.undrained += len(payload)
        self.write([payload])
        return True


class RefusalLog:
    """Warnings about refused connections, at most one per reason every ``every`` seconds."""

    def __init__(self, log: Any, every: float = REFUSAL_LOG_EVERY) -> None:
        self.log = log
        self.every = every
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def refused(self, event: str, reason: str, **fields: Any) -> None:
        now = time.monotonic()
        key = f"{event}:{reason}"
        if now - self._last.get(key, -self.every) < self.every:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        self.log.warning(event, reason=reason, suppressed=suppressed, **fields)


@dataclass(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    source: str
    peer: int | None = None
    raw: asyncio.BaseTransport | None = None  # the TCP transport under TLS

    def __post_init__(self) -> None:
        self.raw = self.writer.transport

    def drop(self) -> None:
        transport = self.writer.transport or self.raw
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()


Deliver = Callable[[int, paxos.Message], None]


class Transport:
    """Listens for peers and keeps one outgoing connection per peer, reconnecting with back-off."""

    def __init__(
        self,
        me: int,
        peers: list[NodeAddress],
        tls: TlsFiles,
        frame_limit: int,
        deliver: Deliver,
        *,
        cluster: str,
        answer: Callable[[int], Hello],
        storage: Storage,
        went_back: Callable[[str], None],
    ) -> None:
        """`cluster` is this node's cluster id, "" if its storage has none, and `answer` what
        it answers a peer that asks (see Hello). Stamps come from and go to `storage`;
        `went_back` is told why when a peer shows that this node's storage went back in time."""
        self.me = me
        self.cluster = cluster
        self.answer = answer
        self.storage = storage
        self.went_back = went_back
        # What was relayed to each peer since its connection began (_news).
        self._told: dict[int, dict[int, tuple[Stamp, tuple[int, ...]]]] = {}
        self.tls = tls
        self.frame_limit = frame_limit
        self.deliver = deliver
        self.log = logs.get()
        self.refusals = RefusalLog(self.log)
        self.addresses = {p.id: p for p in peers}
        self.outboxes = {p.id: Outbox(2 * frame_limit) for p in peers}
        self.connected: set[int] = set()
        self._server_ctx = server_context(tls)
        self._client_ctx = client_context(tls)
        self._senders: dict[int, asyncio.Task[None]] = {}
        # Accepted connections by task. On close they are aborted, not their tasks cancelled:
        # Python 3.11's streams report a cancelled connection handler as an "Exception in callback".
        self._inbound: dict[asyncio.Task[None], _Conn] = {}
        self._pending: dict[str, collections.deque[_Conn]] = collections.defaultdict(
            collections.deque
        )
        self._pending_count = 0
        self._authenticated: dict[int, collections.deque[_Conn]] = collections.defaultdict(
            collections.deque
        )
        self._latest: dict[int, Hello] = {}  # each peer's hello accepted last (_latest_run)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._accept, host, port, reuse_address=True, backlog=256
        )
        self._senders = {p: asyncio.create_task(self._sender(p)) for p in self.addresses}

    def set_peers(self, peers: list[NodeAddress]) -> None:
        """Follow a membership change: connect to new peers and to moved ones again, and stop
        sending to peers that left (their inbound connections end when they do)."""
        wanted = {p.id: p for p in peers if p.id != self.me}
        for peer in [p for p in self.addresses if wanted.get(p) != self.addresses[p]]:
            self._senders.pop(peer).cancel()
            del self.addresses[peer], self.outboxes[peer]
            self.connected.discard(peer)
        for peer, address in wanted.items():
            if peer not in self.addresses:
                self.addresses[peer] = address
                self.outboxes[peer] = Outbox(2 * self.frame_limit)
                self._senders[peer] = asyncio.create_task(self._sender(peer))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._senders.values():
            task.cancel()
        for conn in self._inbound.values():
            conn.drop()
        await asyncio.gather(*self._senders.values(), *self._inbound, return_exceptions=True)

    def send(self, dst: int, msg: paxos.Message) -> None:
        outbox = self.outboxes.get(dst)
        if outbox is None:
            return
        payload = encode(self.me, dst, msg, self.storage.stamp.writes, self._news(dst))
        if len(payload) > self.frame_limit:
            self.log.error("frame_too_large", peer=dst, bytes=len(payload), limit=self.frame_limit)
        elif not outbox.put(payload):
            self.log.debug("frame_not_queued", peer=dst, queued_bytes=outbox.bytes)

    # --- admission before authentication --------------------------------------------------

    def _admit_pending(self, conn: _Conn) -> None:
        """Count a connection in its handshake; over a cap, a random such connection goes."""
        queue = self._pending[conn.source]
        if len(queue) >= PENDING_PER_SOURCE:
            self._evict(random.choice(queue), "too many handshakes from this address")
        if self._pending_count >= PENDING_MAX:
            # From the address with the most connections in their handshake.
            busiest = max(self._pending.values(), key=len)
            self._evict(random.choice(busiest), "too many handshakes in progress")
        queue.append(conn)
        self._pending_count += 1

    def _evict(self, conn: _Conn, reason: str) -> None:
        self._leave_pending(conn)
        conn.drop()
        self.refusals.refused("connection_refused", reason, peer=conn.source)

    def _leave_pending(self, conn: _Conn) -> None:
        queue = self._pending.get(conn.source)
        if queue is not None and conn in queue:
            queue.remove(conn)
            self._pending_count -= 1
            if not queue:
                del self._pending[conn.source]

    async def _handshake(self, conn: _Conn) -> int | None:
        """Run the server side of the TLS handshake; returns the peer's node id or None."""
        self._admit_pending(conn)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await conn.writer.start_tls(self._server_ctx)
            if conn.writer.transport is None:
                raise ConnectionResetError("closed during the handshake")
        except AttributeError:
            # Python 3.11's start_tls fails this way, or "succeeds" with no transport, when the
            # connection closes during the handshake.
            return None
        except TimeoutError:
            self.refusals.refused("connection_refused", "handshake timeout", peer=conn.source)
            return None
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self.refusals.refused(
                "connection_refused", f"handshake failed: {reason}", peer=conn.source
            )
            return None
        finally:
            self._leave_pending(conn)
            if conn.writer.transport is None:  # see above: give the writer a transport to close
                conn.writer._transport = conn.raw  # noqa: SLF001
        peer = peer_id(conn.writer.get_extra_info("ssl_object"))
        if peer is None or peer not in self.addresses:
            self.refusals.refused(
                "connection_refused", f"certificate names no peer ({peer})", peer=conn.source
            )
            return None
        return peer

    def _admit_peer(self, conn: _Conn, peer: int) -> None:
        conn.peer = peer
        slots = self._authenticated[peer]
        while len(slots) >= INBOUND_PER_PEER:
            slots.popleft().drop()  # a restarted peer's old connections may linger half-open
        slots.append(conn)

    # --- inbound ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        source = str(address[0]) if isinstance(address, tuple) else str(address)
        conn = _Conn(writer, source)
        task = asyncio.current_task()
        assert task is not None
        self._inbound[task] = conn
        label = f"{source}:{address[1]}" if isinstance(address, tuple) else source
        try:
            peer = await self._handshake(conn)
            if peer is None:
                return
            self._admit_peer(conn, peer)
            watch = BodyWatch(conn.drop)
            try:
                await self._receive(reader, peer, label, watch)
            finally:
                watch.close()
        except Truncated as exc:  # closed in the middle of a frame, not between two
            self.log.warning("frame_dropped", peer=label, reason=str(exc))
        except OtherCluster as exc:
            self.refusals.refused("peer_refused", str(exc), peer=label)
        except WentBack as exc:
            self.refusals.refused("peer_refused", str(exc), peer=label)
        except Asked:
            answer = self.answer(conn.peer or 0)
            conn.writer.write(frame(0, hello(self.me, conn.peer or 0, answer)))
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await conn.writer.drain()
        except FrameError as exc:
            self.log.warning("connection_dropped", peer=label, reason=str(exc))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass
        except Exception:
            self.log.exception("connection_failed", peer=label)
        finally:
            self._inbound.pop(task, None)
            self._leave_pending(conn)
            if conn.peer is not None and conn in self._authenticated[conn.peer]:
                self._authenticated[conn.peer].remove(conn)
            conn.drop()

    async def _receive(
        self, reader: asyncio.StreamReader, peer: int, label: str, watch: BodyWatch
    ) -> None:
        expected = 0
        hello = None  # the sender's storage's stamp, from its hello
        while True:
            body = await read_frame(reader, self.frame_limit, watch)
            try:
                if len(body) > DECODE_INLINE:
                    got = await asyncio.to_thread(decode, body, self.me, self.frame_limit)
                else:
                    got = decode(body, self.me, self.frame_limit)
                src, seq, msg = got.src, got.seq, got.msg
            except FrameError as exc:
                if expected == 0:
                    # The hello, which the dialling side always sends first: the messages after
                    # it must not skip its checks (cluster, storage went back in time).
                    raise FrameError(f"a first frame that cannot be read: {exc}") from None
                # From an authenticated peer: a bug or a version skew, not an attack. Drop the
                # frame, keep the connection; the sequence moves on.
                self.log.warning("frame_dropped", peer=label, peer_node=peer, reason=str(exc))
                expected += 1
                continue
            if src != peer:
                raise AuthError(f"frame claims node {src} over node {peer}'s certificate")
            if seq != expected:
                raise AuthError(f"frame {seq} out of sequence (expected {expected}): replayed?")
            expected += 1
            if isinstance(msg, Hello):
                self._check_hello(peer, seq, msg)
                self._latest[peer] = msg
                hello = msg.stamp
            else:
                if hello is not None and got.writes is not None:
                    sighting = Stamp(hello.nonce, got.writes, hello.session)
                    if why := from_ended_run(peer, *self._latest_run(peer), sighting):
                        raise WentBack(why)
                    self.storage.saw(peer, sighting)
                self._heard(got.relay)
                self.deliver(src, msg)

    def _latest_run(self, peer: int) -> tuple[Stamp | None, Sessions]:
        """The stamp and opens of `peer`'s hello accepted last (stamps.from_ended_run, ended)."""
        latest = self._latest.get(peer)
        return (latest.stamp, latest.sessions) if latest is not None else (None, ())

    def _heard(self, relay: tuple[Relayed, ...]) -> None:
        for node, stamp, retired in relay:
            if node != self.me:  # of this node: its peers' hellos show it that (behind)
                self.storage.heard(node, stamp, retired)

    def _check_hello(self, peer: int, seq: int, msg: Hello) -> None:
        if seq != 0:
            raise AuthError(f"node {peer} sent a hello in the middle of a connection")
        if msg.ask:
            raise Asked
        if msg.cluster and self.cluster and msg.cluster != self.cluster:
            raise OtherCluster(
                f"node {peer} belongs to cluster {msg.cluster}, this node to cluster"
                f" {self.cluster} (re-founded by mistake with paxmr init --found?)"
            )
        if why := self.storage.behind(peer, msg.seen, msg.retired):
            self.went_back(why)
            raise WentBack(why)
        if msg.stamp is not None:
            if why := ended(peer, *self._latest_run(peer), msg.stamp):
                raise FrameError(why)
            if why := self.storage.refusal(peer, msg.stamp, msg.sessions):
                raise WentBack(why)
            self.storage.saw(peer, msg.stamp)

    # --- outbound --------------------------------------------------------------------------

    def _news(self, peer: int) -> list[Relayed]:
        """What this node saw itself of nodes other than `peer` and has not told it since it
        connected (not what it was told: that would go back where it came from)."""
        told = self._told.setdefault(peer, {})
        news = []
        for node in self.storage.direct - {peer}:
            stamp, retired = self.storage.seen[node], self.storage.retired_of(node)
            if told.get(node) != (stamp, retired):
                told[node] = (stamp, retired)
                news.append(Relayed(node, stamp, retired))
        return news

    async def _sender(self, peer: int) -> None:
        address = self.addresses[peer]
        outbox = self.outboxes[peer]
        delay = RECONNECT_MIN
        while True:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    _, writer = await asyncio.open_connection(
                        address.host,
                        address.port,
                        ssl=self._client_ctx,
                        server_hostname=pki.node_name(peer),
                        ssl_handshake_timeout=CONNECT_TIMEOUT,
                    )
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                if isinstance(exc, ssl.SSLError):
                    self.refusals.refused("peer_refused", f"TLS: {exc.reason}", peer_node=peer)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_MIN
            writer.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(UNACKED_TIMEOUT * 1000)
            )
            self.connected.add(peer)
            self.log.info("peer_connected", peer=peer)
            greeting = Hello(
                self.cluster,
                stamp=self.storage.stamp,
                seen=self.storage.seen.get(peer),
                retired=self.storage.retired_of(peer),
                sessions=self.storage.sessions,
            )
            writer.write(frame(0, hello(self.me, peer, greeting)))
            link = _Link(writer, DIRECT_BYTES)
            self._told[peer] = {}  # a new connection: tell it everything again
            try:
                while True:
                    outbox.link = link
                    payloads = await outbox.take(256)
                    outbox.link = None
                    link.write(payloads)
                    await writer.drain()
                    link.undrained = 0
            except (ConnectionError, OSError):
                self.log.info("peer_disconnected", peer=peer)
            finally:
                outbox.link = None
                self.connected.discard(peer)
                writer.close()


async def ask_cluster(me: int, peer: NodeAddress, tls: TlsFiles) -> Hello | None:
    """Ask a running peer for its answer (Hello: its cluster, its log's length, the highest
    stamp it saw from this node...): `paxmr init --found` asks before it founds, the PRM
    before it starts (prm.learn_cluster, prm.compare_with_peers). None if it does not answer:
    not running, not under this CA, or too old to know the question."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                peer.host,
                peer.port,
                ssl=client_context(tls),
                server_hostname=pki.node_name(peer.id),
                ssl_handshake_timeout=CONNECT_TIMEOUT,
            )
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    try:
        writer.write(frame(0, hello(me, peer.id, Hello("", ask=True))))
        async with asyncio.timeout(CONNECT_TIMEOUT):
            body = await read_frame(reader, MAX_STR_LEN, None)
        msg = decode(body, me, MAX_STR_LEN).msg
    except (FrameError, OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
        return None
    finally:
        writer.close()
    return msg if isinstance(msg, Hello) else None
