"""TLS certificates and site keys for a real federation (``fedray certs``, ``fedray site-key``).

    fedray certs certs/ --host superlink.example.org     # ca.pem ca.key server.pem server.key
    fedray site-key keys/hospital-a                      # hospital-a (private) + hospital-a.pub

**Certificates** (``make_test_pki``): a self-signed CA and a server certificate it signs, with
subject alternative names for ``localhost``, ``127.0.0.1``, ``::1`` and every ``--host`` given.
The SuperLink serves TLS with ``server.pem``/``server.key`` (``--ssl-ca-certfile ca.pem``); sites
and ``flwr`` verify it with ``ca.pem`` (``--root-certificates``). Meant for testing and small
pilots: in production use certificates from your organisation's CA (same file layout).

**Site keys** (``make_site_key``): an ECDSA P-384 key pair in OpenSSH format, which is what Flower
1.41 reads: the SuperNode loads the private key with ``--auth-supernode-private-key`` and signs
every Fleet API call with it; the server registers the public key (``NAME.pub``, one line
``ecdsa-sha2-nistp384 ...``) with ``flwr supernode register`` before the site can join.
Private keys are written with mode 0600 and never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TestPKI:
    """Paths of the files ``make_test_pki`` writes."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class SiteKey:
    """Paths of a site's key pair."""

    private: Path
    public: Path


def _write_private(path: Path, data: bytes, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; refusing to overwrite a private key. "
            "Delete it first or choose another output path."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):  # ordered, no duplicates
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, start: datetime.datetime, end: datetime.datetime
) -> x509.Certificate:
    """A self-signed CA certificate that may sign server certificates only."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedray test CA")])
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA384())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    start: datetime.datetime,
    end: datetime.datetime,
) -> x509.Certificate:
    """A TLS server certificate for ``hosts`` (subject alternative names), signed by the CA."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[-1])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )


def make_test_pki(
    out_dir: str | Path,
    hosts: Sequence[str] = (),
    days: int = 365,
    overwrite: bool = False,
) -> TestPKI:
    """Write ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key`` into ``out_dir``.

    The server certificate is valid for ``localhost``, ``127.0.0.1``, ``::1`` and ``hosts``
    (DNS names or IP addresses of the SuperLink as sites will dial it).
    """
    if days < 1:
        raise ValueError(f"days={days} is not allowed: expected an integer >= 1")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _ca_certificate(ca_key, start, end)
    srv_key = ec.generate_private_key(ec.SECP384R1())
    srv_cert = _server_certificate(srv_key, ca_key, ca_cert, [*DEFAULT_HOSTS, *hosts], start, end)

    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    nocrypt = serialization.NoEncryption()
    paths = TestPKI(out / "ca.pem", out / "ca.key", out / "server.pem", out / "server.key")
    _write_private(paths.ca_key, ca_key.private_bytes(pem, pkcs8, nocrypt), overwrite)
    _write_private(paths.server_key, srv_key.private_bytes(pem, pkcs8, nocrypt), overwrite)
    paths.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    paths.server_cert.write_bytes(srv_cert.public_bytes(pem))
    return paths


def make_site_key(path: str | Path, overwrite: bool = False) -> SiteKey:
    """Write a site's OpenSSH ECDSA P-384 private key to ``path`` and its public key to
    ``path.pub`` (what the server registers)."""
    private = Path(path).expanduser()
    if private.suffix == ".pub":
        raise ValueError(
            f"{private} ends in .pub; give the private key's path (the public key goes to PATH.pub)"
        )
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        overwrite,
    )
    public = private.with_name(private.name + ".pub")
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public.write_bytes(line + f" fedray-site:{private.name}\n".encode())
    return SiteKey(private, public)


def load_site_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    """Read and check a site's ``.pub`` file (OpenSSH ECDSA on a NIST curve, as Flower needs)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"site public key {p} does not exist")
    try:
        key = serialization.load_ssh_public_key(p.read_bytes())
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(
            f"{p} is not an OpenSSH public key ({e}); create site keys with `fedray site-key`"
        ) from e
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(
            f"{p} holds a {type(key).__name__}; Flower needs an ECDSA key on a NIST curve "
            "(create one with `fedray site-key`)"
        )
    return key


__all__ = ["SiteKey", "TestPKI", "load_site_public_key", "make_site_key", "make_test_pki"]
