"""Peak memory and time of robust aggregation: fedray's disk-backed rules vs Flower's own.

    python bench/bench_robust_memory.py [--model-mb 100] [--ks 8,16,32,64]
        [--rules median,trimmed,krum,cc] [--impls ours,flower] [--max-gb 12]
        [--store-dir /tmp] [--out FILE]

Every configuration (implementation, rule, K) runs in a fresh Python process, so its peak
resident memory (``ru_maxrss``) is its own. In each, K distinct updates of a ``--model-mb`` MB
float32 model (transformer-like tensors) are drawn, as K sites would send them:

- **ours**: replies arrive one at a time and each is written to a
  :class:`strategies.reply_store.ReplyStore` and dropped (what a strategy does as
  ``stream_replies`` yields them); then the rule (``strategies/median.py``, ``krum.py``, ...) runs over the store.
  Times: writing the K replies ("store"), then the rule ("aggregate").
- **flower**: the K replies are held as ``Message`` objects with an ``ArrayRecord`` each (the list
  ``Grid.send_and_receive`` returns), then Flower's own strategy aggregates them:
  ``FedMedian.aggregate_train``, ``FedTrimmedAvg(beta).aggregate_train`` or
  ``Krum(num_malicious_nodes=f).aggregate_train`` (flwr 1.41, ``flwr.serverapp.strategy``).
  Time: the aggregation only (holding the replies costs no time).

Memory is reported above the process's baseline (after imports, before any update): the peak
while receiving and aggregating. Flower runs whose predicted peak (:func:`predicted_flower_gb`)
exceeds ``--max-gb`` are skipped (the machine has no swap, and others share it). The store's files are
in the page cache while the rule reads them (they were just written), as on a server with free
RAM; the page cache is not counted in a process's resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RULES = ("median", "trimmed", "krum", "cc")
TRIM = 0.25
CC_TAU, CC_ITERS = 1.0, 1


def model_shapes(mb: float) -> dict[str, tuple[int, ...]]:
    """~``mb`` MB of float32 shaped like a small transformer: d=512 blocks (attention, MLP, layer
    norms) for about 3/4 of it, an embedding for the rest (so no tensor dominates)."""
    total = int(mb * 1e6 / 4)
    d = 512 if total >= 4 * 12 * 512 * 512 else 128  # small models get narrower blocks
    block = {"attn": (d, 3 * d), "proj": (d, d), "fc": (d, 4 * d), "out": (4 * d, d), "ln": (d,)}
    per_block = sum(int(np.prod(s)) for s in block.values())
    n_blocks = max(1, int(0.75 * total) // per_block)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(n_blocks):
        for name, s in block.items():
            shapes[f"h.{i}.{name}"] = s
    shapes["wte"] = (max(1, (total - n_blocks * per_block) // d), d)
    return shapes


def make_update(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) * 1e-3 for k, s in shapes.items()}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KiB on Linux


def predicted_flower_gb(rule: str, k: int, model_mb: float, largest_mb: float) -> float:
    """Flower's peak, from its code: the K replies held, plus for FedMedian/FedTrimmedAvg a
    stacked copy of every reply's tensor and its sorted copy (largest tensor), for Krum every
    reply flattened and then stacked (two more copies of all of it)."""
    if rule == "krum":
        return 3.2 * k * model_mb / 1e3
    return 1.05 * k * (model_mb + 2 * largest_mb) / 1e3


def byzantine(k: int) -> int:
    """f for Krum: a quarter of the replies, as long as K > 2f + 2 (K=8: 2, 16: 4, 64: 16)."""
    return max(0, min(k // 4, (k - 3) // 2))


# ---- one configuration, in a child process ---------------------------------------------------


def child(impl: str, rule: str, k: int, mb: float, store_dir: str) -> dict:
    from strategies.centered_clip import centered_clipping
    from strategies.krum import krum
    from strategies.median import coordinate_median
    from strategies.reply_store import ReplyStore
    from strategies.trimmed_mean import trimmed_mean

    if impl == "flower":
        from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
        from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg, Krum

        from orchestrator.contract.arrays import from_numpy
        from orchestrator.federated.local_grid import ensure_task_identity

        ensure_task_identity()
    shapes = model_shapes(mb)
    model_bytes = sum(int(np.prod(s)) * 4 for s in shapes.values())
    # Touch the allocator and numpy's RNG once so the baseline includes their fixed costs.
    make_update({"x": (1024,)}, 0)
    base = rss_mb()
    tracemalloc.start()
    out: dict = {"impl": impl, "rule": rule, "k": k, "model_mb": model_bytes / 1e6}
    if impl == "ours":
        with ReplyStore(store_dir) as store:
            t_store = 0.0
            for i in range(k):
                update = make_update(shapes, i)
                t = time.perf_counter()
                store.add(f"site-{i}", update, 10.0 + i)
                t_store += time.perf_counter() - t
                del update
            held = rss_mb()
            tracemalloc.reset_peak()
            t = time.perf_counter()
            if rule == "median":
                coordinate_median(store)
            elif rule == "trimmed":
                trimmed_mean(store, TRIM)
            elif rule == "krum":
                krum(store, byzantine(k))
            else:
                centered_clipping(store, CC_TAU, clip_iters=CC_ITERS)
            out["aggregate_s"] = time.perf_counter() - t
            out["store_s"] = t_store
    else:
        replies = []
        for i in range(k):
            ins = Message(
                RecordDict({"c": ConfigRecord({})}),
                dst_node_id=i + 1,
                message_type=MessageType.TRAIN,
            )
            ins.metadata.__dict__["_message_id"] = f"i{i}"
            content = RecordDict(
                {
                    "arrays": from_numpy(make_update(shapes, i)),
                    "metrics": MetricRecord({"num-examples": 10 + i}),
                }
            )
            replies.append(Message(content=content, reply_to=ins))
        held = rss_mb()
        tracemalloc.reset_peak()
        strategy = {
            "median": lambda: FedMedian(),
            "trimmed": lambda: FedTrimmedAvg(beta=TRIM),
            "krum": lambda: Krum(num_malicious_nodes=byzantine(k)),
        }[rule]()
        t = time.perf_counter()
        arrays, _ = strategy.aggregate_train(1, replies)
        out["aggregate_s"] = time.perf_counter() - t
        assert arrays is not None
    out["traced_aggregate_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    out["held_mb"] = held - base
    out["peak_mb"] = maxrss_mb() - base
    return out


# ---- the parent: one child per configuration, then the table ---------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB RAM, Python {platform.python_version()}"
    )


def run_child(impl: str, rule: str, k: int, mb: float, store_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, rule, str(k), str(mb), store_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"impl": impl, "rule": rule, "k": k, "error": proc.stderr.strip()[-300:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        impl, rule, k, mb, store_dir = sys.argv[2:7]
        print(json.dumps(child(impl, rule, int(k), float(mb), store_dir)))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-mb", type=float, default=100.0)
    ap.add_argument("--ks", default="8,16,32,64")
    ap.add_argument("--rules", default="median,trimmed,krum,cc")
    ap.add_argument("--impls", default="ours,flower")
    ap.add_argument("--max-gb", type=float, default=12.0, help="skip Flower runs predicted above")
    ap.add_argument("--store-dir", default=tempfile.gettempdir())
    ap.add_argument("--out", help="also append the Markdown table to this file")
    args = ap.parse_args()
    ks = [int(x) for x in args.ks.split(",")]
    rules = [r for r in args.rules.split(",") if r]
    unknown = set(rules) - set(RULES)
    if unknown:
        ap.error(f"unknown rules {sorted(unknown)}; choose from {RULES}")
    shapes = model_shapes(args.model_mb)
    model_mb = sum(int(np.prod(s)) * 4 for s in shapes.values()) / 1e6
    largest = max(int(np.prod(s)) * 4 for s in shapes.values()) / 1e6
    need_gb = model_mb * max(ks) / 1e3
    free_gb = shutil.disk_usage(args.store_dir).free / 1e9
    if "ours" in args.impls and need_gb > 0.8 * free_gb:
        sys.exit(f"the store needs {need_gb:.1f} GB in {args.store_dir}, {free_gb:.1f} GB free")

    lines = [
        f"Model: {model_mb:.1f} MB float32 in {len(shapes)} tensors (largest {largest:.1f} MB). "
        f"Machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}.",
        "",
        f"Command: `python bench/bench_robust_memory.py --model-mb {args.model_mb:g} "
        f"--ks {args.ks} --rules {args.rules} --impls {args.impls} --max-gb {args.max_gb:g}`",
        "",
        "| rule | K | ours: peak RSS MB (x model) | ours: traced MB, rule | ours: store s | "
        "ours: rule s | Flower: peak RSS MB (x model) | Flower: held replies MB | Flower: s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for rule in rules:
        for k in ks:
            ours = (
                run_child("ours", rule, k, args.model_mb, args.store_dir)
                if "ours" in (args.impls)
                else None
            )
            predicted = predicted_flower_gb(rule, k, model_mb, largest)
            if rule == "cc" or "flower" not in args.impls:
                fl = None
                fl_cells = ["n/a (no Flower rule)" if rule == "cc" else "-", "-", "-"]
            elif predicted > args.max_gb:
                fl = None
                fl_cells = [f"not run (predicted ~{predicted:.0f} GB > {args.max_gb:g})", "-", "-"]
            else:
                fl = run_child("flower", rule, k, args.model_mb, args.store_dir)
                fl_cells = _cells_flower(fl, model_mb)
            row = [rule, str(k), *_cells_ours(ours, model_mb), *fl_cells]
            line = "| " + " | ".join(row) + " |"
            lines.append(line)
            print(line, flush=True)
            for r in (ours, fl):
                if r and "error" in r:
                    print(f"  error ({r['impl']}): {r['error']}", file=sys.stderr)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


def _cells_ours(r: dict | None, model_mb: float) -> list[str]:
    if r is None:
        return ["-"] * 4
    if "error" in r:
        return ["error", "-", "-", "-"]
    return [
        f"{r['peak_mb']:.0f} ({r['peak_mb'] / model_mb:.1f}x)",
        f"{r['traced_aggregate_mb']:.0f}",
        f"{r['store_s']:.1f}",
        f"{r['aggregate_s']:.1f}",
    ]


def _cells_flower(r: dict, model_mb: float) -> list[str]:
    if "error" in r:
        return ["error (see stderr)", "-", "-"]
    return [
        f"{r['peak_mb']:.0f} ({r['peak_mb'] / model_mb:.1f}x)",
        f"{r['held_mb']:.0f}",
        f"{r['aggregate_s']:.1f}",
    ]


if __name__ == "__main__":
    main()
