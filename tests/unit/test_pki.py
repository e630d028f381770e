from __future__ import annotations

import contextlib
import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from paxmr import pki
from paxmr.services import transport
from paxmr.settings import Settings


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_node_certificate_names_its_node_and_keys_are_private(tmp_path: Path) -> None:
    assert pki.issue(tmp_path / "ca", 3, tmp_path / "n3")
    cert = _cert(tmp_path / "n3" / "peer-cert")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["paxmr-node-3"]
    assert cert.issuer == _cert(tmp_path / "ca" / "ca.pem").subject
    for key in (tmp_path / "ca" / "ca.key", tmp_path / "n3" / "peer-key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_issue_is_idempotent_repairs_modes_and_renews(tmp_path: Path) -> None:
    pki.issue(tmp_path / "ca", 1, tmp_path / "n1")
    key = tmp_path / "n1" / "peer-key"
    before = key.read_bytes()
    assert not pki.issue(tmp_path / "ca", 1, tmp_path / "n1")
    key.chmod(0o644)
    assert pki.issue(tmp_path / "ca", 1, tmp_path / "n1")  # repaired, not reissued
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes() == before
    # A certificate near its end is issued again.
    pki.issue(tmp_path / "ca", 2, tmp_path / "n2", days=pki.RENEW_DAYS - 1)
    old = _cert(tmp_path / "n2" / "peer-cert")
    assert pki.issue(tmp_path / "ca", 2, tmp_path / "n2")
    new = _cert(tmp_path / "n2" / "peer-cert")
    assert new.not_valid_after_utc - old.not_valid_after_utc > dt.timedelta(days=300)


def test_node_id_of() -> None:
    assert pki.node_id_of(["paxmr-node-7"]) == 7
    assert pki.node_id_of(["paxmr-node-7", "other"]) == 7
    assert pki.node_id_of(["paxmr-node-7", "paxmr-node-8"]) is None
    assert pki.node_id_of(["paxmr-node-07", "xpaxmr-node-7", "paxmr-node-0"]) is None
    assert pki.node_id_of([]) is None


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, name: str) -> int | None:
    """A TLS handshake in memory; returns the node id the server reads from the client."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for obj in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        try:
            s.do_handshake()
            c.do_handshake()
        except ssl.SSLWantReadError:
            continue
        break
    assert s.version() == "TLSv1.3"
    return transport.peer_id(s)


def _files(root: Path, ca: str, node: int) -> Settings:
    pki.issue(root / ca, node, root / f"{ca}-{node}")
    return Settings(tls_dir=root / f"{ca}-{node}")


def test_mutual_tls_names_the_client_and_refuses_another_ca(tmp_path: Path) -> None:
    server = transport.server_context(_files(tmp_path, "ca", 1).tls_files())
    client = transport.client_context(_files(tmp_path, "ca", 2).tls_files())
    assert _handshake(client, server, "paxmr-node-1") == 2
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(client, server, "paxmr-node-3")  # node 1 answered where 3 was dialled
    stranger = transport.client_context(_files(tmp_path, "other", 2).tls_files())
    with pytest.raises(ssl.SSLError):
        _handshake(stranger, server, "paxmr-node-1")
