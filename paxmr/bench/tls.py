"""What peer TLS costs: the PRM's framing over TLS 1.3 and over plain TCP, in the same run.

The PRM has no plain-TCP mode any more (peers must authenticate, issue 10), so a replicated log
cannot run both ways. What TLS adds to a replicate is its cost on the peer round trip that every
commit waits for: the leader's Accept out, a follower's Accepted back. This bench measures that
round trip on loopback through the transport's own code (``transport.frame``/``read_frame``,
``server_context``/``client_context`` with certificates from the cluster's CA), once over TLS and
once over plain TCP, alternating in rounds so both see the same machine load; and the
replicate latency of a real local 3-node cluster (TLS). The plain-TCP replicate latency is then
estimated as the measured one minus the round trip's extra cost over TLS, and the ratio printed.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from paxmr import pki
from paxmr.bench import replicate
from paxmr.services import transport
from paxmr.settings import TlsFiles

ACCEPT_BYTES = 200  # an Accept of a small log object, framed
TALLY_BYTES = 400_000  # an Accept carrying a real tally (about 400 KB)
FRAME_LIMIT = 32 << 20


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A follower's side: each frame in is answered by a small frame (an Accepted)."""
    reply = b"a" * 60
    seq = 0
    watch = transport.BodyWatch(writer.transport.abort)  # as the PRM reads a peer's frames
    try:
        while True:
            await transport.read_frame(reader, FRAME_LIMIT, watch)
            writer.write(transport.frame(seq, reply))
            seq += 1
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, transport.FrameError):
        pass
    finally:
        watch.close()
        writer.close()


async def _round(
    port: int, tls: TlsFiles | None, size: int, count: int
) -> tuple[float, list[float], str]:
    """Connect (and handshake), then ``count`` round trips of a ``size``-byte frame; returns the
    connect time, the round trips and the protocol spoken."""
    started = time.perf_counter()
    if tls is None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    else:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=transport.client_context(tls), server_hostname=pki.node_name(1)
        )
    connect = time.perf_counter() - started
    ssl_object = writer.get_extra_info("ssl_object")
    protocol = ssl_object.version() if ssl_object is not None else "plain TCP"
    payload = b"p" * size
    rtts = []
    watch = transport.BodyWatch(writer.transport.abort)  # as the PRM reads the Accepted
    for seq in range(count):
        sent = time.perf_counter()
        writer.write(transport.frame(seq, payload))
        await writer.drain()
        await transport.read_frame(reader, FRAME_LIMIT, watch)
        rtts.append(time.perf_counter() - sent)
    watch.close()
    writer.close()
    await writer.wait_closed()  # the follower's side sees the end and returns
    return connect, rtts, protocol


async def _transport(
    tls_server: TlsFiles, tls_client: TlsFiles, rounds: int, count: int
) -> dict[str, Any]:
    secure = await asyncio.start_server(
        _echo, "127.0.0.1", 0, ssl=transport.server_context(tls_server)
    )
    plain = await asyncio.start_server(_echo, "127.0.0.1", 0)
    ports = {"tls": secure.sockets[0].getsockname()[1], "plain": plain.sockets[0].getsockname()[1]}
    files = {"tls": tls_client, "plain": None}
    rtt: dict[tuple[str, int], list[float]] = {}
    connect: dict[str, list[float]] = {"tls": [], "plain": []}
    spoken: dict[str, set[str]] = {"tls": set(), "plain": set()}
    try:
        for _ in range(rounds):  # alternate, so both modes see the same load on the machine
            for mode in ("tls", "plain"):
                for size, n in ((ACCEPT_BYTES, count), (TALLY_BYTES, max(1, count // 20))):
                    took, times, protocol = await _round(ports[mode], files[mode], size, n)
                    connect[mode].append(took)
                    spoken[mode].add(protocol)
                    rtt.setdefault((mode, size), []).extend(times)
    finally:
        for server in (secure, plain):
            server.close()
            await server.wait_closed()  # every connection handler has returned
    us = {key: statistics.median(values) * 1e6 for key, values in rtt.items()}
    return {
        "tls": " ".join(sorted(spoken["tls"])),
        "plain": " ".join(sorted(spoken["plain"])),
        "rtt_small_tls_us": round(us["tls", ACCEPT_BYTES], 1),
        "rtt_small_plain_us": round(us["plain", ACCEPT_BYTES], 1),
        "rtt_small_ratio": round(us["tls", ACCEPT_BYTES] / us["plain", ACCEPT_BYTES], 2),
        "rtt_tally_tls_us": round(us["tls", TALLY_BYTES], 1),
        "rtt_tally_plain_us": round(us["plain", TALLY_BYTES], 1),
        "rtt_tally_ratio": round(us["tls", TALLY_BYTES] / us["plain", TALLY_BYTES], 2),
        "connect_tls_ms": round(statistics.median(connect["tls"]) * 1e3, 2),
        "connect_plain_ms": round(statistics.median(connect["plain"]) * 1e3, 2),
    }


def transport_figures(rounds: int = 10, count: int = 200) -> dict[str, Any]:
    """The peer round trip and connect time over TLS and plain TCP (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="paxmr-bench-tls-") as tmp:
        root = Path(tmp)
        pki.issue(root / "ca", 1, root / "n1")
        pki.issue(root / "ca", 2, root / "n2")
        server, client = (
            TlsFiles(d / pki.CA_FILE, d / pki.CERT_FILE, d / pki.KEY_FILE)
            for d in (root / "n1", root / "n2")
        )
        return asyncio.run(_transport(server, client, rounds, count))


def run(sequential: int, rounds: int = 10, count: int = 200) -> dict[str, Any]:
    figures = transport_figures(rounds, count)
    seq = replicate.sequential(sequential)
    p50_ms = statistics.median(seq) * 1e3
    extra_ms = (figures["rtt_small_tls_us"] - figures["rtt_small_plain_us"]) / 1e3
    return {
        **figures,
        "replicate_tls_p50_ms": round(p50_ms, 2),
        "replicate_plain_p50_ms_est": round(p50_ms - extra_ms, 2),
        "replicate_ratio_est": round(p50_ms / (p50_ms - extra_ms), 3),
    }
