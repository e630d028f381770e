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


def test_renew_days_sets_how_early_ensure_issues_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The role's paxmr_tls_renew_days: a certificate with a year left is kept by default and
    issued again when renewal starts 400 days before the end."""
    args = ["ensure", "--ca", str(tmp_path / "ca"), "--out", str(tmp_path / "nodes"), "--node=1"]
    assert pki.main(args) == 0
    assert capsys.readouterr().out.strip() == '{"changed": ["ca", "1"]}'
    cert = (tmp_path / "nodes" / "1" / "peer-cert").read_bytes()
    pki.main(args)
    assert capsys.readouterr().out.strip() == '{"changed": []}'
    pki.main([*args, "--renew-days", "400"])
    assert capsys.readouterr().out.strip() == '{"changed": ["1"]}'
    assert (tmp_path / "nodes" / "1" / "peer-cert").read_bytes() != cert


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


def _snapshot(root: Path, node: int, tag: str) -> Path:
    """Copy a node's files as they are now (a node not yet restarted keeps these)."""
    src, dst = root / "nodes" / str(node), root / f"snap-{tag}-{node}"
    dst.mkdir()
    for name in ("peer-ca", "peer-cert", "peer-key"):
        (dst / name).write_bytes((src / name).read_bytes())
        (dst / name).chmod(0o600)
    return dst


def _pair(a: Path, b: Path, b_id: int) -> int | None:
    """Node with files ``a`` dials node ``b_id`` whose files are ``b``; returns the id b reads."""
    server = transport.server_context(Settings(tls_dir=b).tls_files())
    client = transport.client_context(Settings(tls_dir=a).tls_files())
    return _handshake(client, server, pki.node_name(b_id))


def test_ca_rotation_keeps_every_pair_of_steps_talking(tmp_path: Path) -> None:
    ca = tmp_path / "ca"

    def ensure() -> None:
        for n in (1, 2):
            pki.issue(ca, n, tmp_path / "nodes" / str(n))

    ensure()
    steps = [_snapshot(tmp_path, n, "start") for n in (1, 2)]
    for step in ("begin", "switch", "finish"):
        pki.rotate(ca, step)
        ensure()
        now = [_snapshot(tmp_path, n, step) for n in (1, 2)]
        # During a rolling restart, node 1 may already run the new files and node 2 the last ones.
        for a, b in ((now[0], steps[1]), (steps[0], now[1])):
            assert _pair(a, b, 2) == 1
            assert _pair(b, a, 1) == 2
        steps = now
    issuer = _cert(tmp_path / "nodes" / "1" / "peer-cert").issuer
    assert issuer == _cert(ca / "ca.pem").subject
    assert not (ca / "old.pem").exists()
    # Steps out of order are refused.
    with pytest.raises(RuntimeError):
        pki.rotate(ca, "finish")
