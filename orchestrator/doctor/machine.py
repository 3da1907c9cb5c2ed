"""This machine: GPUs and NCCL, free disk where runs and caches go, the server's port."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.doctor.check import Check, GiB
from orchestrator.processes.network import bind_error

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
    e = bind_error(host, port)  # as gRPC servers bind: SO_REUSEADDR
    if e is None:
        return Check("OK", name, f"free for fedray server (checked on {host})")
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
