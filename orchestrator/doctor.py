"""``fedray doctor``: is this machine ready to run fedray? One line per check, with a fix.

    fedray doctor                                   # versions, GPUs, disk, the server port
    fedray doctor --address 10.0.0.5:6379           # + the Ray cluster: reachable? resources?
    fedray doctor --certs certs/ --host fl.example.org --port 9092   # + TLS files for the server

Each line starts with ``OK``, ``WARN`` (works, but look at it) or ``FAIL`` (will not work), and a
problem ends with ``-> fix: ...``. Exit code 1 when any check FAILs, else 0. Nothing here starts
or joins Ray: the cluster is probed with a TCP connect to its address and its dashboard's HTTP
API, each with a short timeout, so an unreachable address fails in seconds instead of hanging.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

Status = Literal["OK", "WARN", "FAIL"]

PINNED = ("torch", "ray", "flwr", "deepspeed", "transformers")
"""Packages whose exact versions matter (checked one line each; the rest in one line)."""
PROBE_TIMEOUT_S = 3.0
RAY_GCS_PORT = 6379
RAY_CLIENT_PORT = 10001
RAY_DASHBOARD_PORT = 8265
CERT_WARN_DAYS = 30
GiB = 1024**3


@dataclass
class Check:
    status: Status
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.detail}" + (
            f" -> fix: {self.fix}" if self.fix else ""
        )


# ---- versions -------------------------------------------------------------------------------


def _requirements(requires: Iterable[str]) -> dict[str, Any]:
    """name -> packaging Requirement, for the install-time (non-extra) requirements."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = {}
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and "extra" in str(req.marker):
            continue
        if req.marker is None or req.marker.evaluate():
            out[canonicalize_name(req.name)] = req
    return out


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _source_pyproject() -> Path | None:
    """pyproject.toml of a source checkout this package runs from (editable install), if any."""
    p = Path(__file__).resolve().parents[1] / "pyproject.toml"
    return p if p.is_file() else None


def _pyproject_requires(path: Path) -> list[str] | None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return None
    try:
        return list(tomllib.loads(path.read_text())["project"]["dependencies"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None


def check_versions(
    requires: Iterable[str] | None = None,
    installed: Callable[[str], str | None] = _installed,
    pyproject: Path | None = None,
) -> list[Check]:
    """Installed versions against the pins fedray was installed with (its metadata), and the
    installed metadata against the source ``pyproject.toml`` when running from a checkout."""

    checks = []
    pyproject = pyproject if pyproject is not None else _source_pyproject()
    if requires is None:
        try:
            requires = metadata.requires("fedray") or []
        except metadata.PackageNotFoundError:
            source = _pyproject_requires(pyproject) if pyproject else None
            if source is None:
                return [
                    Check(
                        "FAIL",
                        "fedray",
                        "not installed, so its pinned versions are unknown",
                        "pip install -e . (in the fedray checkout)",
                    )
                ]
            checks.append(
                Check(
                    "WARN",
                    "fedray",
                    f"not installed; pins read from {pyproject}",
                    "pip install -e .",
                )
            )
            requires = source
    requires = list(requires)
    reqs = _requirements(requires)
    for name in PINNED:
        req = reqs.get(name)
        have = installed(name)
        if req is None:
            checks.append(Check("WARN", name, f"{have or 'not installed'}; fedray pins no version"))
        elif have is None:
            checks.append(
                Check(
                    "FAIL", name, f"not installed (pinned {req.specifier})", f"pip install '{req}'"
                )
            )
        elif not req.specifier.contains(have, prereleases=True):
            checks.append(
                Check(
                    "FAIL",
                    name,
                    f"{have} installed, fedray pins {req.specifier}",
                    f"pip install '{req}'",
                )
            )
        else:
            checks.append(Check("OK", name, f"{have} (pinned {req.specifier})"))
    source = _pyproject_requires(pyproject) if pyproject else None
    wanted = _requirements(source) if source is not None else {}
    # Dependencies a newer checkout added are needed too (e.g. matplotlib for fedray report).
    others = {**{n: r for n, r in wanted.items() if n not in reqs}, **reqs}
    others = {n: r for n, r in others.items() if n not in PINNED}
    bad = []
    for name, req in sorted(others.items()):
        have = installed(name)
        if have is None or not req.specifier.contains(have, prereleases=True):
            bad.append((req, have))
    if bad:
        listing = ", ".join(
            f"{r.name} {h or 'missing'} (wants {r.specifier or 'any'})" for r, h in bad
        )
        fix = "pip install " + " ".join(f"'{r}'" for r, _ in bad)
        checks.append(Check("FAIL", "other dependencies", listing, fix))
    else:
        checks.append(Check("OK", "other dependencies", f"{len(others)} satisfied"))
    if source is not None:
        missing = sorted(set(wanted) - set(reqs))
        changed = sorted(n for n in set(wanted) & set(reqs) if str(wanted[n]) != str(reqs[n]))
        if missing or changed:
            parts = ([f"new: {', '.join(missing)}"] if missing else []) + (
                [f"changed: {', '.join(changed)}"] if changed else []
            )
            checks.append(
                Check(
                    "WARN",
                    "fedray metadata",
                    f"installed requirements differ from {pyproject} ({'; '.join(parts)})",
                    "pip install -e . (re-install after pulling)",
                )
            )
    return checks


# ---- GPUs -----------------------------------------------------------------------------------


def check_gpus(torch: Any = None) -> list[Check]:
    """CUDA devices torch sees and the NCCL version; none is a WARN (CPU-only works, on gloo).
    ``torch``: the module to ask (tests pass a fake); default the installed one."""
    if torch is None:
        try:
            import torch
        except Exception as e:  # broken wheel, missing libraries
            return [Check("FAIL", "cuda", f"torch does not import ({e})", "pip install -e .")]
    built = torch.version.cuda
    if not torch.cuda.is_available():
        smi = shutil.which("nvidia-smi")
        if built is None and smi:
            return [
                Check(
                    "WARN",
                    "cuda",
                    f"nvidia-smi is present but torch {torch.__version__} is a CPU-only build",
                    "install a CUDA build of the pinned torch (https://pytorch.org/get-started/)",
                )
            ]
        if built is not None and smi:
            return [
                Check(
                    "WARN",
                    "cuda",
                    f"torch is built for CUDA {built} but sees no GPU",
                    "check nvidia-smi, the driver version and CUDA_VISIBLE_DEVICES",
                )
            ]
        return [
            Check(
                "WARN",
                "cuda",
                "no GPU visible: CPU-only, pretraining runs CPU workers over gloo "
                "(fine for tests, demos and federated sites)",
                "for GPU pretraining: a machine with NVIDIA GPUs and a CUDA build of torch",
            )
        ]
    n = torch.cuda.device_count()
    names = []
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        names.append(f"{i}: {p.name} ({p.total_memory / GiB:.0f} GiB, sm_{p.major}{p.minor})")
    checks = [Check("OK", "cuda", f"CUDA {built}, {n} GPU(s): " + "; ".join(names))]
    try:
        v = torch.cuda.nccl.version()
        text = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        checks.append(Check("OK", "nccl", text))
    except Exception as e:
        checks.append(
            Check(
                "FAIL",
                "nccl",
                f"not available ({e}); multi-GPU pretraining needs it",
                "install a CUDA build of torch (it ships NCCL)",
            )
        )
    return checks


# ---- disk -----------------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    p = path.expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_disk(
    paths: Mapping[str, Path], warn_gb: float = 10.0, fail_gb: float = 1.0
) -> list[Check]:
    """Free space and write access where runs and the data cache go (or their nearest existing
    parent, for a directory not created yet)."""
    checks = []
    for name, path in paths.items():
        where = _existing(path)
        label = f"{path}" + ("" if where == path.expanduser().absolute() else f" (on {where})")
        try:
            free = shutil.disk_usage(where).free / GiB
        except OSError as e:
            checks.append(Check("FAIL", name, f"{label}: cannot stat ({e.strerror})"))
            continue
        if not os.access(where, os.W_OK):
            checks.append(
                Check(
                    "FAIL",
                    name,
                    f"{label}: not writable",
                    "fix the permissions or point it elsewhere (run.root=..., data.cache_dir=...)",
                )
            )
        elif free < fail_gb:
            checks.append(
                Check(
                    "FAIL",
                    name,
                    f"{label}: {free:.1f} GiB free (< {fail_gb:g} GiB)",
                    "free space or point it at a larger disk (run.root=..., data.cache_dir=...)",
                )
            )
        elif free < warn_gb:
            checks.append(
                Check(
                    "WARN",
                    name,
                    f"{label}: {free:.1f} GiB free (< {warn_gb:g} GiB)",
                    "checkpoints and exports of large models need tens of GiB; free space",
                )
            )
        else:
            checks.append(Check("OK", name, f"{label}: {free:.0f} GiB free"))
    return checks


# ---- Ray cluster ----------------------------------------------------------------------------


def resolve_ray_address(address: str) -> tuple[str, str, int, str]:
    """``auto``, ``HOST[:PORT]`` (GCS), ``ray://HOST[:PORT]`` (Ray Client) or ``http://HOST:PORT``
    (dashboard) -> (kind, host, port to probe, dashboard URL guess). ValueError if malformed."""
    from orchestrator.federated.launch import parse_address

    a = address.strip()
    if a == "auto":
        a = os.environ.get("RAY_ADDRESS", "")
        if not a:
            f = Path("/tmp/ray/ray_current_cluster")
            a = f.read_text().strip() if f.is_file() else ""
        if not a or a == "auto":
            raise ValueError(
                "address 'auto' found no cluster (RAY_ADDRESS unset, no "
                "/tmp/ray/ray_current_cluster); give HOST:PORT"
            )
        # Like Ray's own lookup; the file may name a cluster that has stopped since.
    if a.startswith(("http://", "https://")):
        host, port = parse_address(a.split("://", 1)[1].rstrip("/"), RAY_DASHBOARD_PORT)
        return "dashboard", host, port, a.rstrip("/")
    kind, default = ("client", RAY_CLIENT_PORT) if a.startswith("ray://") else ("gcs", RAY_GCS_PORT)
    host, port = parse_address(a.removeprefix("ray://"), default)
    h = f"[{host}]" if ":" in host else host
    return kind, host, port, f"http://{h}:{RAY_DASHBOARD_PORT}"


def tcp_probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if something accepts a TCP connection at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as e:
        return f"cannot resolve {host!r} ({e.strerror})"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except ConnectionRefusedError:
        return "connection refused (nothing listening)"
    except OSError as e:
        return e.strerror or str(e)


def _proto_string(buf: bytes, field: int) -> str | None:
    """The first length-delimited ``field`` of a serialized protobuf message, as text."""
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            b = buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    try:
        while i < len(buf):
            tag = varint()
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                varint()
            elif wire == 2:
                n = varint()
                if i + n > len(buf):
                    return None
                if number == field:
                    return buf[i : i + n].decode()
                i += n
            elif wire in (1, 5):
                i += 8 if wire == 1 else 4
            else:
                return None
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def gcs_probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> tuple[str | None, str]:
    """Ask the server at host:port, over gRPC, whether it is a serving Ray GCS.

    Returns (the Ray version it reports or None, "" if it is a GCS, else why not). Uses the
    standard gRPC health service, then the GCS's ``CheckAlive`` (its reply carries the Ray
    version); nothing is registered with the cluster.
    """
    import grpc

    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    try:
        health = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            reply = health(b"", timeout=timeout)
        except grpc.RpcError as e:
            return None, f"not a Ray GCS (gRPC health check: {e.code().name}: {e.details()})"
        if reply != b"\x08\x01":  # HealthCheckResponse{status: SERVING}
            return None, f"GCS not serving (health reply {reply!r})"
        try:
            alive = channel.unary_unary("/ray.rpc.NodeInfoGcsService/CheckAlive")(
                b"", timeout=timeout
            )
            return _proto_string(alive, 2), ""  # CheckAliveReply.ray_version
        except grpc.RpcError:
            return None, ""
    finally:
        channel.close()


def _get_json(url: str, timeout: float) -> Any:
    # Direct connection, like Ray's own clients: an HTTP proxy from the environment must not
    # answer for (or hide) a cluster on the local network.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _resources(status: Any) -> tuple[int, dict[str, tuple[float, float]]] | None:
    """(nodes, {resource: (used, total)}) from the dashboard's /api/cluster_status."""
    try:
        cs = status["data"]["clusterStatus"]
        usage = cs["loadMetricsReport"]["usage"]
        report = cs.get("autoscalerReport") or {}
        nodes = sum((report.get("activeNodes") or {}).values()) + sum(
            (report.get("idleNodes") or {}).values()
        )
        res = {k: (float(v[0]), float(v[1])) for k, v in usage.items() if not k.startswith("node:")}
        return nodes, res
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


def _format_resources(nodes: int, res: Mapping[str, tuple[float, float]]) -> str:
    parts = [f"{nodes} node(s)"] if nodes else []
    for key in ("CPU", "GPU"):
        used, total = res.get(key, (0.0, 0.0))
        parts.append(f"{key} {used:g}/{total:g} used")
    if "memory" in res:
        parts.append(f"memory {res['memory'][1] / GiB:.1f} GiB")
    extra = sorted(k for k in res if k not in ("CPU", "GPU", "memory", "objectStoreMemory"))
    if extra:
        parts.append("other: " + ", ".join(f"{k}={res[k][1]:g}" for k in extra))
    return ", ".join(parts)


def _version_check(theirs: str) -> Check:
    ours = _installed("ray") or "?"
    if theirs == ours:
        return Check("OK", "ray version", f"cluster and this machine run Ray {ours}")
    return Check(
        "FAIL",
        "ray version",
        f"cluster runs Ray {theirs}, this machine {ours}; Ray needs the same version on every "
        "node and driver",
        f"pip install 'ray[train,default]=={theirs}' here, or upgrade the cluster",
    )


def check_ray(
    address: str | None, dashboard: str | None = None, timeout: float = PROBE_TIMEOUT_S
) -> list[Check]:
    """Is a Ray cluster at ``address``, which version, which resources? Probes only (TCP, gRPC
    health, the dashboard's HTTP API), each bounded by ``timeout``: never ``ray.init``."""
    if not address:
        return [
            Check(
                "OK",
                "ray cluster",
                "not checked (no --address): fedray pretrain starts an embedded Ray here; "
                "give --address HOST:PORT to check a cluster",
            )
        ]
    name = f"ray cluster {address}"
    try:
        kind, host, port, dash_guess = resolve_ray_address(address)
    except (ValueError, OSError) as e:
        return [Check("FAIL", name, str(e), "give --address HOST:PORT (the head's GCS address)")]
    why = tcp_probe(host, port, timeout)
    if why is not None:
        return [
            Check(
                "FAIL",
                name,
                f"not reachable at {host}:{port}: {why}",
                {
                    "gcs": f"start the head there (`ray start --head --port={port}`)",
                    "client": "start the head there (`ray start --head` serves ray:// on 10001)",
                    "dashboard": f"start the head with `--dashboard-port={port}`",
                }[kind]
                + ", or check the address, the firewall and the route from this machine",
            )
        ]
    checks = []
    version = None
    if kind == "gcs":
        version, why = gcs_probe(host, port, timeout)
        if why:
            return [
                Check(
                    "FAIL",
                    name,
                    f"{host}:{port} accepts connections but is {why}",
                    "give the head's GCS address (`ray start --head --port=PORT`, default 6379)",
                )
            ]
        checks.append(Check("OK", name, f"Ray GCS at {host}:{port} is serving"))
    else:
        checks.append(Check("OK", name, f"{host}:{port} accepts connections ({kind} port)"))
    if version:
        checks.append(_version_check(version))
    dash = (dashboard or dash_guess).rstrip("/")
    try:
        if not version:
            version = str(_get_json(f"{dash}/api/version", timeout).get("ray_version", "?"))
            checks.append(_version_check(version))
        status = _get_json(f"{dash}/api/cluster_status", timeout)
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as e:
        reason = getattr(e, "reason", None) or e
        return [
            *checks,
            Check(
                "WARN",
                "ray resources",
                f"dashboard {dash} not reachable ({reason}): resources not checked",
                "pass --dashboard http://HOST:PORT (the head's --dashboard-port), or run "
                "`ray status` on the head",
            ),
        ]
    parsed = _resources(status)
    if parsed is None:
        checks.append(
            Check(
                "WARN",
                "ray resources",
                f"{dash}/api/cluster_status gave no resource report",
                "run `ray status` on the head node",
            )
        )
    else:
        nodes, res = parsed
        detail = _format_resources(nodes, res)
        if res.get("GPU", (0, 0))[1] == 0:
            checks.append(
                Check(
                    "WARN",
                    "ray resources",
                    f"{detail}; no GPUs",
                    "fine for CPU runs; GPU pretraining (scaling.use_gpu=true) needs GPU nodes",
                )
            )
        else:
            checks.append(Check("OK", "ray resources", detail))
    return checks


# ---- TLS certificates -----------------------------------------------------------------------


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


# ---- ports ----------------------------------------------------------------------------------


def _listener(port: int) -> str:
    """' (pid N, name)' of a process listening on ``port``, when psutil may tell."""
    try:
        import psutil

        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                return f" (pid {c.pid}, {psutil.Process(c.pid).name()})"
    except Exception:  # AccessDenied without root, a process that exited meanwhile
        pass
    return ""


def check_port(port: int, host: str = "0.0.0.0") -> Check:
    """Can ``fedray server`` bind ``port``? (The SuperLink serves everything on one port.)"""
    name = f"port {port}"
    if not 1 <= port <= 65535:
        return Check("FAIL", name, "not in 1..65535", "fedray server --port N with N in 1..65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC servers do
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return Check(
                    "FAIL",
                    name,
                    f"in use{_listener(port)}: fedray server cannot listen on it",
                    "stop that process, or pick another port: fedray server --port N "
                    "(sites then dial HOST:N)",
                )
            if e.errno == errno.EACCES:
                return Check(
                    "FAIL",
                    name,
                    "permission denied (ports < 1024 need root)",
                    "use a port >= 1024, e.g. the default 9092",
                )
            return Check("FAIL", name, f"cannot bind ({e.strerror})", "pick another port")
    return Check("OK", name, f"free for fedray server (checked on {host})")


# ---- command --------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    from orchestrator.config.schema import DataConfig, RunConfig
    from orchestrator.federated.launch import DEFAULT_PORT

    p = argparse.ArgumentParser(
        prog="fedray doctor",
        description="Check versions, GPUs, disk, a Ray cluster, certificates and ports. "
        "Exit 1 when a check FAILs.",
    )
    p.add_argument("--address", help="Ray cluster to check: HOST:PORT, ray://HOST:PORT or auto")
    p.add_argument("--dashboard", help="its dashboard URL (default http://HOST:8265)")
    p.add_argument("--certs", type=Path, help="TLS directory of fedray server (ca.pem, server.pem)")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="a name sites dial the server by; must be in server.pem (repeatable)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="fedray server's port")
    p.add_argument(
        "--run-root", type=Path, default=Path(RunConfig.root), help="where runs go (run.root)"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(DataConfig.cache_dir),
        help="data/tokenizer cache (data.cache_dir)",
    )
    p.add_argument("--min-free-gb", type=float, default=10.0, help="WARN below this free space")
    return p


def run_checks(
    ns: argparse.Namespace, emit: Callable[[Check], None] = lambda c: None
) -> list[Check]:
    """All checks for the parsed arguments; ``emit`` sees each as soon as it is done."""
    groups: list[Callable[[], list[Check]]] = [
        check_versions,
        check_gpus,
        lambda: check_disk(
            {"disk run.root": ns.run_root, "disk data.cache_dir": ns.cache_dir}, ns.min_free_gb
        ),
        lambda: check_ray(ns.address, ns.dashboard),
    ]
    if ns.certs is not None:
        groups.append(lambda: check_certs(ns.certs, ns.host))
    groups.append(lambda: [check_port(ns.port)])
    out = []
    for group in groups:
        for c in group():
            emit(c)
            out.append(c)
    return out


def main(argv: list[str]) -> int:
    ns = parser().parse_args(argv)
    t0 = time.monotonic()

    def emit(c: Check) -> None:
        print(c.line(), flush=True)

    checks = run_checks(ns, emit)
    fails = sum(c.status == "FAIL" for c in checks)
    warns = sum(c.status == "WARN" for c in checks)
    verdict = "not ready" if fails else "ready"
    print(
        f"doctor: {verdict}: {len(checks)} checks, {warns} WARN, {fails} FAIL "
        f"({time.monotonic() - t0:.1f} s)",
        file=sys.stderr if fails else sys.stdout,
    )
    return 1 if fails else 0


__all__ = [
    "Check",
    "check_certs",
    "check_disk",
    "check_gpus",
    "check_port",
    "check_ray",
    "check_versions",
    "main",
    "run_checks",
]
