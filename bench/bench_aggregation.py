"""Aggregation throughput and peak memory: fedray's streaming FedAvg vs Flower's built-in
``aggregate_arrayrecords`` vs a numpy roofline (``a += w * b`` over the same bytes).

    python bench/bench_aggregation.py [--mb 100] [--ks 2,4,8,16,32,64] [--flower-mem-max-k 16]

Throughput: K replies of an ``--mb`` MB model (12 tensors shaped like a small transformer's),
drawn from a pool of 4 distinct updates so the pool's memory is fixed; GB/s = update bytes
folded / seconds. Our number includes reply validation (keys, shapes, dtypes, NaN/Inf scan).
Peak memory (tracemalloc, which traces numpy buffers and message bytes): replies are distinct
objects; ours arrive one at a time from a generator (what ``stream_replies`` does), Flower's are
held in a list (what ``Grid.send_and_receive`` returns). Flower's memory run is capped at
``--flower-mem-max-k`` replies on small machines (it grows by one model per reply).
"""

from __future__ import annotations

import argparse
import platform
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from orchestrator.contract.arrays import from_numpy, to_numpy
from orchestrator.federated.local_grid import ensure_task_identity
from strategies import FedAvg
from strategies.fold import FoldSettings


def model_shapes(mb: float) -> dict[str, tuple[int, ...]]:
    """~mb MB of float32 in transformer-like tensors (embeddings + 4 blocks)."""
    d = 512
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(4):
        shapes[f"h.{i}.attn"] = (d, 3 * d)
        shapes[f"h.{i}.mlp"] = (d, 4 * d)
        shapes[f"h.{i}.ln"] = (d,)
    per_block = sum(int(np.prod(s)) for s in shapes.values())
    vocab = max(1, int((mb * 1e6 / 4 - per_block) // d))
    shapes["wte"] = (vocab, d)
    return shapes


def make_update(shapes, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) * 1e-3 for k, s in shapes.items()}


def reply(update: dict[str, np.ndarray] | RecordDict, n: int, node: int) -> Message:
    ins = Message(
        RecordDict({"c": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.TRAIN
    )
    ins.metadata.__dict__["_message_id"] = f"i{node}"
    content = (
        update
        if isinstance(update, RecordDict)
        else RecordDict(
            {"arrays": from_numpy(update), "metrics": MetricRecord({"num-examples": n})}
        )
    )
    return Message(content=content, reply_to=ins)


def ours(global_rec, replies, accumulate: str = "float64") -> float:
    s = FedAvg(fold=FoldSettings(accumulate=accumulate))
    s._global = to_numpy(global_rec)
    t = time.perf_counter()
    arrays, _ = s.aggregate_train(1, replies)
    assert arrays is not None
    return time.perf_counter() - t


def flowers(contents: list[RecordDict]) -> float:
    t = time.perf_counter()
    aggregate_arrayrecords(contents, "num-examples")
    return time.perf_counter() - t


def roofline(pool_np: list[dict[str, np.ndarray]], k: int) -> float:
    acc = {key: np.zeros_like(v) for key, v in pool_np[0].items()}
    t = time.perf_counter()
    for i in range(k):
        b = pool_np[i % len(pool_np)]
        w = np.float32(1.0 / k)
        for key, a in acc.items():
            a += w * b[key]
    return time.perf_counter() - t


def peak(fn) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=100.0)
    ap.add_argument("--ks", default="2,4,8,16,32,64")
    ap.add_argument("--flower-mem-max-k", type=int, default=16)
    args = ap.parse_args()
    ensure_task_identity()
    ks = [int(x) for x in args.ks.split(",")]
    shapes = model_shapes(args.mb)
    model_bytes = sum(int(np.prod(s)) * 4 for s in shapes.values())
    gb = model_bytes / 1e9
    print(
        f"# model {model_bytes / 1e6:.1f} MB in {len(shapes)} tensors; {platform.processor() or platform.machine()}"
    )
    global_rec = from_numpy({k: np.zeros(s, np.float32) for k, s in shapes.items()})
    pool_np = [make_update(shapes, i) for i in range(4)]
    pool = [
        RecordDict({"arrays": from_numpy(u), "metrics": MetricRecord({"num-examples": 10 + i})})
        for i, u in enumerate(pool_np)
    ]
    pool_views = [to_numpy(p["arrays"]) for p in pool]

    # Warm-up: first-touch page faults and lazy imports are not per-round costs.
    for acc in ("float64", "float32"):
        ours(global_rec, (reply(pool[i], 0, i) for i in range(2)), acc)
        roofline(pool_views, 2)

    print("\n## throughput (GB/s of updates folded)\n")
    print(
        "| K | ours, float64 sum (default) | ours, float32 sum | Flower aggregate_arrayrecords"
        " | numpy roofline `a += w*b` (float32) | ours / roofline (f64, f32) |"
    )
    print("|---|---|---|---|---|---|")
    for k in ks:
        t64 = ours(global_rec, (reply(pool[i % 4], 0, i) for i in range(k)), "float64")
        t32 = ours(global_rec, (reply(pool[i % 4], 0, i) for i in range(k)), "float32")
        t_fl = flowers([pool[i % 4] for i in range(k)])
        t_rf = roofline(pool_views, k)
        g = gb * k
        print(
            f"| {k} | {g / t64:.2f} | {g / t32:.2f} | {g / t_fl:.2f} | {g / t_rf:.2f} "
            f"| {t_rf / t64:.0%}, {t_rf / t32:.0%} |",
            flush=True,
        )

    print("\n## peak traced memory while aggregating K distinct replies (multiples of one model)\n")
    print("| K | ours, float64 sum | ours, float32 sum | Flower (list of K replies) |")
    print("|---|---|---|---|")
    for k in ks:

        def run_ours(k=k, accumulate="float64"):
            def arriving() -> Iterator[Message]:
                for i in range(k):
                    yield reply(make_update(shapes, 100 + i % 4), 10, i)

            ours(global_rec, arriving(), accumulate)

        p64 = peak(run_ours) / model_bytes
        p32 = peak(lambda k=k: run_ours(k, "float32")) / model_bytes
        if k <= args.flower_mem_max_k:

            def run_flower(k=k):
                held = [reply(make_update(shapes, 100 + i % 4), 10, i).content for i in range(k)]
                flowers(held)

            p_fl = f"{peak(run_flower) / model_bytes:.1f}"
        else:
            p_fl = f"not run (> {args.flower_mem_max_k}; ~K + 2)"
        print(f"| {k} | {p64:.1f} | {p32:.1f} | {p_fl} |", flush=True)


if __name__ == "__main__":
    main()
