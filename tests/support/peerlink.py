"""Real peer transports (TLS, storage) on loopback, and a cut of the link between two of them.

``cut_and_heal``: a live peer link cut by dropping its packets, then healed: how long after the
heal do frames flow again? Run as root inside a fresh network namespace (its own loopback, its
own nftables rules, nothing else touched): ``unshare -n python -m tests.support.peerlink DIR
CUT_SECONDS`` prints a JSON object.

Node 1's transport sends node 2 a small frame every ``TICK`` seconds, as a leader's heartbeats
do. The cut is an nftables rule on the input hook that drops every TCP packet: the senders'
kernels see nothing (a drop on the output hook would fail their sends with EPERM at once), no
reset is sent, and acknowledgements stop both ways, as when a network between two hosts fails.
Ending a process or closing a socket would not do: the kernel answers for a stopped process,
and a closed socket sends a FIN or a reset.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from paxmr import pki
from paxmr.paxos.messages import Forward, Message
from paxmr.services.transport import Hello, Transport
from paxmr.settings import NodeAddress, TlsFiles
from paxmr.storage import Identity, Storage

FRAME_LIMIT = 4 << 20
TICK = 0.1  # seconds between two frames, the PRM's default heartbeat
WAIT_AFTER_HEAL = 120.0  # TCP's retransmission back-off grows up to 120 s
CUT_RULES = """
table inet paxmr_cut {
    chain input {
        type filter hook input priority 0; policy accept;
        meta l4proto tcp drop
    }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def peer_transport(
    tmp: Path, me: int, ports: dict[int, int], deliver: Callable[[int, Message], None]
) -> Transport:
    """A real transport for node `me` (TLS files and storage under `tmp`) whose peers listen on
    `ports` of 127.0.0.1."""
    pki.issue(tmp / "ca", me, tmp / f"n{me}")
    d = tmp / f"n{me}"
    tls = TlsFiles(d / pki.CA_FILE, d / pki.CERT_FILE, d / pki.KEY_FILE)
    storage = Storage.open(
        tmp / f"{me}.db", bootstrap=True, identity=Identity("c", (1, 2)), node=me
    )
    peers = [NodeAddress(id=n, host="127.0.0.1", port=p) for n, p in ports.items() if n != me]
    return Transport(
        me, peers, tls, FRAME_LIMIT, deliver, cluster="c",
        answer=lambda _peer: Hello("c"), storage=storage, went_back=lambda _why: None,
    )  # fmt: skip


def _nft(rules: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)


async def cut_and_heal(tmp: Path, cut: float) -> dict[str, float | int]:
    """Cut the live link from node 1 to node 2 for `cut` seconds, heal it; the figures."""
    ports = {1: free_port(), 2: free_port()}
    arrivals: list[float] = []
    arrived = asyncio.Event()

    def deliver(_src: int, _msg: Message) -> None:
        arrivals.append(time.monotonic())
        arrived.set()

    async def until(done: Callable[[], bool]) -> None:
        while not done():
            arrived.clear()
            await arrived.wait()

    one = peer_transport(tmp, 1, ports, lambda _src, _msg: None)
    two = peer_transport(tmp, 2, ports, deliver)
    await one.start("127.0.0.1", ports[1])
    await two.start("127.0.0.1", ports[2])

    async def tick() -> None:
        for k in range(sys.maxsize):
            one.send(2, Forward(f"h{k}", b""))
            await asyncio.sleep(TICK)

    ticker = asyncio.create_task(tick())
    try:
        async with asyncio.timeout(30):
            await until(lambda: len(arrivals) >= 10)  # the link is up and carries frames
        _nft(CUT_RULES)
        cut_at = time.monotonic()
        await asyncio.sleep(cut)
        _nft("delete table inet paxmr_cut")
        healed = time.monotonic()
        async with asyncio.timeout(WAIT_AFTER_HEAL):
            await until(lambda: arrivals[-1] >= healed)
        return {
            "cut_s": cut,
            "recovered_s": round(next(t for t in arrivals if t >= healed) - healed, 3),
            # Frames that came through the cut after its first second (the frames already in
            # the receiver's buffer come in that second): none if the cut holds.
            "through_the_cut": sum(cut_at + 1 < t < healed for t in arrivals),
        }
    finally:
        ticker.cancel()
        for t in (one, two):
            await t.close()
            t.storage.close()


def main() -> None:
    tmp, cut = Path(sys.argv[1]), float(sys.argv[2])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    print(json.dumps(asyncio.run(cut_and_heal(tmp, cut))))


if __name__ == "__main__":
    main()
