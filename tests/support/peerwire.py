"""A hand-made peer client for the cluster tier: raw sockets, TLS from the standard library,
frames built here (not with the transport's encoder, so the tests do not share its bugs).

A peer frame is ``length (4 bytes) | seq (8 bytes) | msgpack payload``, big-endian, where the
length counts seq and payload (see paxmr/services/transport.py); the payload is a map
``{"src": id, "dst": id, "msg": ...}``. Connections are mutual TLS 1.3 with the cluster's CA.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import msgpack

from paxmr import pki
from tests.support.local import Node


def payload(msg: object, src: object = 2, dst: object = 1) -> bytes:
    packed: bytes = msgpack.packb({"src": src, "dst": dst, "msg": msg}, use_bin_type=True)
    return packed


def hello(src: object, dst: object, **fields: object) -> bytes:
    """The payload of a connection's first frame, which every dialler sends, naming no cluster
    (the listener then skips that check), with ``fields`` (a ``stamp``, say) added."""
    packed: bytes = msgpack.packb({"src": src, "dst": dst, "hello": "", **fields})
    return packed


def frame(seq: int, body: bytes) -> bytes:
    return struct.pack(">IQ", 8 + len(body), seq) + body


def address(node: Node) -> tuple[str, int]:
    me = next(a for a in node.settings.nodes if a.id == node.id)
    return me.host, me.port


def tls_dir(root: Path, node_id: int) -> Path:
    """Where ``paxmr local up`` keeps node ``node_id``'s key, certificate and CA bundle."""
    return root / f"n{node_id}" / "tls"


def context(creds: Path | None) -> ssl.SSLContext:
    """A client context presenting the key and certificate in ``creds`` (none if None)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we attack the server; whom it is does not matter here
    if creds is not None:
        ctx.load_cert_chain(creds / pki.CERT_FILE, creds / pki.KEY_FILE)
    return ctx


def plain(node: Node) -> socket.socket:
    sock = socket.create_connection(address(node), timeout=10)
    sock.settimeout(10)
    return sock


@contextlib.contextmanager
def as_node(node: Node, creds: Path | None) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to ``node`` presenting ``creds``; the handshake is complete on entry
    (for the client: in TLS 1.3 the server may still refuse the client's certificate)."""
    raw = plain(node)
    with context(creds).wrap_socket(raw, server_hostname=pki.node_name(node.id)) as sock:
        yield sock


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True when the PRM hangs up on us (EOF, reset or a TLS alert) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def log_offset(node: Node) -> int:
    return node.prm_log.stat().st_size
