"""The cluster's own certificate authority and the node certificates it issues.

Each node's certificate names its node id as ``paxmr-node-<id>`` (subject CN and a DNS
subjectAltName); the peer transport takes a connection's sender from that name. The CA key
stays where it was created (the Ansible controller, or a local cluster's directory).

This module needs only the standard library and ``cryptography``, so the Ansible role can run
it with the controller's own Python (``python pki.py ensure ...``) without installing paxmr.
Keys are written with mode 0600 from the start (``O_EXCL``); an existing key file readable by
others is repaired to 0600 and reported.

Rotating the CA without downtime takes three steps, each followed by a rolling restart of the
nodes with their new files (``rotate``): ``begin`` creates the next CA, which every node trusts
from then on (``next.pem`` joins the bundle) while certificates still come from the current one;
``switch`` makes it the signing CA (the old one stays trusted as ``old.pem``), so every node
certificate is issued again; ``finish`` drops the old CA from the bundle. At every step each
node trusts the CA of every certificate in use.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# cryptography is imported by the functions that make or read keys and certificates: the PRM
# needs only node_name and node_id_of (its transport), and importing cryptography would add
# about a tenth of its start-up CPU (tests/unit/test_imports.py).
if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

NAME_PREFIX = "paxmr-node-"
_NAME = re.compile(r"paxmr-node-([1-9][0-9]{0,2})")
CA_DAYS = 3650
NODE_DAYS = 365
RENEW_DAYS = 30  # a node certificate closer than this to its end is issued again

# File names, the same in a local cluster's node directory and in systemd's credentials
# directory (LoadCredential=peer-ca:..., peer-cert:..., peer-key:...).
CA_FILE, CERT_FILE, KEY_FILE = "peer-ca", "peer-cert", "peer-key"


def node_name(node_id: int) -> str:
    return f"{NAME_PREFIX}{node_id}"


def node_id_of(names: list[str]) -> int | None:
    """The node id that a certificate's names give, or None unless exactly one name is a node's."""
    ids = {int(m.group(1)) for n in names if (m := _NAME.fullmatch(n))}
    return ids.pop() if len(ids) == 1 else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the imports

    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    tmp.replace(path)


def repair_key_mode(path: Path) -> bool:
    """Make a private key file 0600 if group or others could read it; True when it changed."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(0o600)
        return True
    return False


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the imports
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{path}: not an EC private key")
    return key


def ensure_ca(directory: Path, stem: str = "ca") -> tuple[Path, Path, bool]:
    """``directory/ca.pem`` and ``ca.key`` (or another ``stem``), created when missing; returns
    (cert, key, created). Each CA has its own name, so certificates say which one issued them."""
    from cryptography import x509  # noqa: PLC0415 - see the imports
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        repair_key_mode(key_path)
        return cert_path, key_path, False
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    name = f"paxmr cluster CA {now:%Y-%m-%d} {x509.random_serial_number() % 16**8:08x}"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, True


def _needs_issue(
    cert_path: Path, key_path: Path, ca: x509.Certificate, node_id: int, renew_days: int
) -> bool:
    from cryptography import x509  # noqa: PLC0415 - see the imports

    if not (cert_path.exists() and key_path.exists()):
        return True
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        _load_key(key_path)
    except (ValueError, TypeError):
        return True
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        cert.issuer != ca.subject
        or node_id_of(sans.get_values_for_type(x509.DNSName)) != node_id
        or cert.not_valid_after_utc - _now() < dt.timedelta(days=renew_days)
    )


def issue(
    ca_dir: Path,
    node_id: int,
    out: Path,
    days: int = NODE_DAYS,
    renew_days: int = RENEW_DAYS,
) -> bool:
    """Write ``out/peer-key``, ``out/peer-cert`` and ``out/peer-ca`` for ``node_id``, issuing a
    new certificate only when there is none, it is from another CA, or it ends within
    ``renew_days``. Returns True when something was (re)written."""
    from cryptography import x509  # noqa: PLC0415 - see the imports
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    ca_cert_path, ca_key_path, _ = ensure_ca(ca_dir)
    ca = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_pem = bundle_of(ca_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path, bundle = out / CERT_FILE, out / KEY_FILE, out / CA_FILE
    changed = False
    if key_path.exists():
        changed |= repair_key_mode(key_path)
    if not bundle.exists() or bundle.read_bytes() != ca_pem:
        _write_public(bundle, ca_pem)
        changed = True
    if not _needs_issue(cert_path, key_path, ca, node_id, renew_days):
        return changed
    ca_key = _load_key(ca_key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    name = node_name(node_id)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return True


def bundle_of(ca_dir: Path) -> bytes:
    """The CAs a node trusts: the signing CA, and the next or old one during a rotation."""
    parts = [ca_dir / f"{stem}.pem" for stem in ("ca", "next", "old")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def rotate(ca_dir: Path, step: str) -> None:
    """One step of a CA rotation (see the module's docstring): begin, switch or finish."""
    current, nxt, old = (ca_dir / f"{stem}.pem" for stem in ("ca", "next", "old"))
    if step == "begin":
        if nxt.exists() or old.exists():
            raise RuntimeError("a rotation is under way: switch or finish it first")
        ensure_ca(ca_dir, "next")
    elif step == "switch":
        if not nxt.exists():
            raise RuntimeError("no next CA: begin the rotation first")
        current.replace(old)
        (ca_dir / "ca.key").unlink()
        nxt.replace(current)
        (ca_dir / "next.key").replace(ca_dir / "ca.key")
    elif step == "finish":
        if nxt.exists() or not old.exists():
            raise RuntimeError("nothing to finish: begin and switch first")
        old.unlink()
    else:
        raise ValueError(f"unknown rotation step {step!r}")


def main(argv: list[str] | None = None) -> int:
    """``pki.py ensure --ca DIR --out DIR [--renew-days N] --node ID...``: the CA in --ca (created
    if missing) and, for each node, ``--out/<id>/peer-{ca,cert,key}`` (issued again within N days
    of its end). Prints ``{"changed": [...]}``. The commands
    ``begin``, ``switch`` and ``finish`` take that step of a CA rotation first."""
    parser = argparse.ArgumentParser(prog="paxmr-pki")
    parser.add_argument("command", choices=["ensure", "begin", "switch", "finish"])
    parser.add_argument("--ca", type=lambda s: Path(s).expanduser(), required=True)
    parser.add_argument("--out", type=lambda s: Path(s).expanduser(), required=True)
    parser.add_argument("--node", type=int, action="append", default=[])
    parser.add_argument("--renew-days", type=int, default=RENEW_DAYS)
    args = parser.parse_args(argv)
    if args.command != "ensure":
        rotate(args.ca, args.command)
    _, _, created = ensure_ca(args.ca)
    changed = ["ca"] if created else []
    changed += [
        str(n)
        for n in args.node
        if issue(args.ca, n, args.out / str(n), renew_days=args.renew_days)
    ]
    print(json.dumps({"changed": changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
