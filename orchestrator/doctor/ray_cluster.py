"""A Ray cluster at ``--address``: reachable, a serving GCS, its Ray version, its resources.

Only probes, each bounded by a timeout (TCP connect, gRPC health, the dashboard's HTTP API):
never ``ray.init``, so nothing is registered with the cluster and nothing can hang.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.doctor.check import Check, GiB, installed_version
from orchestrator.processes.network import tcp_probe

PROBE_TIMEOUT_S = 3.0
RAY_GCS_PORT = 6379
RAY_CLIENT_PORT = 10001
RAY_DASHBOARD_PORT = 8265


def resolve_ray_address(address: str) -> tuple[str, str, int, str]:
    """``auto``, ``HOST[:PORT]`` (GCS), ``ray://HOST[:PORT]`` (Ray Client) or ``http://HOST:PORT``
    (dashboard) -> (kind, host, port to probe, dashboard URL guess). ValueError if malformed."""
    from orchestrator.processes.launch import parse_address

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


def proto_string(buf: bytes, field: int) -> str | None:
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
            return proto_string(alive, 2), ""  # CheckAliveReply.ray_version
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


def parse_cluster_status(status: Any) -> tuple[int, dict[str, tuple[float, float]]] | None:
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


def format_resources(nodes: int, res: Mapping[str, tuple[float, float]]) -> str:
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
    ours = installed_version("ray") or "?"
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
    parsed = parse_cluster_status(status)
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
        detail = format_resources(nodes, res)
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
