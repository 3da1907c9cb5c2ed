"""The server's TLS files (``fedray certs`` layout): expiry, names, issuer, key permissions."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.doctor.check import Check

CERT_WARN_DAYS = 30


def _load_cert(path: Path) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def _validity(name: str, cert: Any, now: datetime.datetime, renew: str) -> Check:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    days = (end - now).total_seconds() / 86400
    when = end.strftime("%Y-%m-%d")
    if now < start:
        return Check(
            "FAIL",
            name,
            f"not valid before {start:%Y-%m-%d %H:%M} UTC",
            "check this machine's clock, or re-issue the certificate",
        )
    if days < 0:
        return Check("FAIL", name, f"expired on {when} ({-days:.0f} days ago)", renew)
    if days < CERT_WARN_DAYS:
        return Check("WARN", name, f"expires on {when} (in {days:.0f} days)", renew)
    return Check("OK", name, f"valid until {when} ({days:.0f} days)")


def _san_names(cert: Any) -> list[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def check_certs(
    directory: Path, hosts: Iterable[str] = (), now: datetime.datetime | None = None
) -> list[Check]:
    """``ca.pem`` and ``server.pem`` (``fedray certs`` layout): validity, the server's names,
    that the CA signed it, and ``server.key`` present and private."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    d = directory.expanduser()
    renew = f"re-issue: `fedray certs {d} --host HOST --force` (test PKI) or renew with your CA"
    if not d.is_dir():
        return [Check("FAIL", "certs", f"{d} is not a directory", f"fedray certs {d} --host HOST")]
    certs = {}
    checks = []
    for fname in ("ca.pem", "server.pem"):
        path = d / fname
        if not path.is_file():
            checks.append(Check("FAIL", fname, f"{path} is missing", renew))
            continue
        try:
            certs[fname] = _load_cert(path)
        except (ValueError, OSError) as e:
            checks.append(Check("FAIL", fname, f"{path} is not a PEM certificate ({e})", renew))
            continue
        checks.append(_validity(f"{fname}", certs[fname], now, renew))
    server, ca = certs.get("server.pem"), certs.get("ca.pem")
    if server is not None:
        names = _san_names(server)
        if not names:
            checks.append(
                Check(
                    "FAIL",
                    "server.pem names",
                    "no subject alternative names; TLS clients will refuse it",
                    renew,
                )
            )
        else:
            checks.append(Check("OK", "server.pem names", ", ".join(names)))
        for h in hosts:
            if h not in names:
                checks.append(
                    Check(
                        "FAIL",
                        "server.pem names",
                        f"{h!r} is not among them: sites dialling {h} will refuse the server",
                        renew.replace("HOST", h),
                    )
                )
    if server is not None and ca is not None:
        try:
            server.verify_directly_issued_by(ca)
            checks.append(Check("OK", "server.pem issuer", "signed by ca.pem"))
        except Exception as e:  # ValueError / InvalidSignature / TypeError by key type
            checks.append(
                Check(
                    "FAIL",
                    "server.pem issuer",
                    f"not signed by ca.pem ({type(e).__name__}); "
                    "sites verify the server with ca.pem",
                    renew,
                )
            )
    key = d / "server.key"
    if not key.is_file():
        checks.append(
            Check("FAIL", "server.key", f"{key} is missing (fedray server needs it)", renew)
        )
    elif key.stat().st_mode & 0o077:
        checks.append(
            Check("WARN", "server.key", f"{key} is readable by other users", f"chmod 600 {key}")
        )
    else:
        checks.append(Check("OK", "server.key", "present, private (mode 600)"))
    return checks
