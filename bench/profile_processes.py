"""CPU seconds by kind of process while a command runs: which of the processes a federation or
a test starts (SuperLink, SuperNodes, ClientApps, Ray, ...) spends the machine's cores.

    python bench/profile_processes.py OUT.json -- python -m pytest tests/integration/test_sites.py -k tls

Every process started after this script (the command and what it starts, and anything else
started meanwhile: profile on a quiet machine) is sampled every 0.3 s (``psutil``); its last
sample counts, so a process that lives less than 0.3 s is missed and the CPU a process spends
after its last sample is not counted (a lower bound). Processes are grouped by the first known
name in their command line (``KINDS``), Ray workers by their process title.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import psutil

KINDS = (
    "flower-superlink", "flower-superexec", "flower-supernode", "flwr-clientapp",
    "flwr-serverapp", "flwr-simulation", "flwr run", "flwr ls", "site_worker", "raylet",
    "gcs_server", "dashboard", "log_monitor", "fedray server", "fedray site", "pytest",
    "orchestrator.cli",
)  # fmt: skip


def kind(cmdline: list[str], name: str) -> str:
    text = " ".join(cmdline)[:400]
    if name.startswith("ray::") or text.startswith("ray::"):
        return "ray worker " + (name or text)[:40]
    return next((k for k in KINDS if k in text), text[:60] or name)


Key = tuple[int, float]


def existing() -> set[Key]:
    """Processes alive before the command (psutil's start times and time.time() can disagree by
    a second on a VM, so the processes are told apart by identity, not by start time)."""
    return {(p.pid, p.info["create_time"]) for p in psutil.process_iter(["create_time"])}


def sample(before: set[Key], seen: dict[Key, tuple[str, float]]) -> None:
    for p in psutil.process_iter(["pid", "create_time", "cmdline", "cpu_times", "name"]):
        info = p.info
        key = (info["pid"], info["create_time"])
        if key in before or info["cpu_times"] is None:
            continue
        label = seen[key][0] if key in seen else kind(info["cmdline"] or [], info["name"] or "")
        seen[key] = (label, info["cpu_times"].user + info["cpu_times"].system)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    before, seen = existing(), {}
    t0 = time.monotonic()
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        sample(before, seen)
        time.sleep(0.3)
    wall = time.monotonic() - t0
    totals: dict[str, list[float]] = {}
    for label, cpu in seen.values():
        row = totals.setdefault(label, [0, 0.0])
        row[0] += 1
        row[1] += cpu
    rows = sorted(
        ({"kind": k, "processes": int(n), "cpu_s": round(c, 1)} for k, (n, c) in totals.items()),
        key=lambda r: -r["cpu_s"],
    )
    report = {"command": command, "rc": proc.returncode, "wall_s": round(wall, 1), "rows": rows}
    args.out.write_text(json.dumps(report, indent=1))
    for r in rows[:20]:
        print(f"{r['cpu_s']:8.1f} CPU-s {r['processes']:4d} x {r['kind']}")
    print(
        f"total {sum(r['cpu_s'] for r in rows):.1f} CPU-s in {wall:.1f} s wall (rc {proc.returncode})"
    )


if __name__ == "__main__":
    main()
