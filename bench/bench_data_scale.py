"""Pretraining data at scale: driver memory and time vs corpus size, tokenization throughput.

    python bench/bench_data_scale.py                       # 0.1, 0.5 and 2 GB of text
    python bench/bench_data_scale.py --sizes 0.1 --num-proc 1,2 --reference-max 0.1

For each size a corpus is synthesized from the bundled demo corpus (its lines shuffled into
plain-text files of 64 MB) and tokenized with a byte-level BPE trained once
on the demo corpus (vocab 8192; ``data.tokenizer.path``, so no tokenizer training is timed).
Every measurement runs in a fresh process with a cold cache, one tokenizer thread per process
(``TOKENIZERS_PARALLELISM=false``: N processes = N cores):

- ``build``: ``prepare_text_data`` (the sharded token cache) with ``data.num_proc`` = 1 (in the
  driver) and N (processes): wall time, MB of text per second, the driver's peak RSS
  (``ru_maxrss`` of that process) and the largest tokenizer process's peak RSS;
- ``reference``: the previous implementation (every token in one Python list, packed into one
  array on the driver), for sizes up to ``--reference-max`` (its memory grows with the corpus);
- ``first step``: ``fedray pretrain`` (1 worker, tiny model, 1 step) from a cold cache: seconds
  from launch until step 1 is in metrics.jsonl, and the driver process's peak RSS (VmHWM).

Results are printed and appended to bench/results/data_scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MB = 2**20
FILE_BYTES = 64 * MB


def synthesize(out: Path, size_bytes: int, seed: int = 0) -> Path:
    """Text files of shuffled demo-corpus lines (each file one document), ``size_bytes`` total.

    Plain text, so the measurement is tokenization and the cache, not ``datasets``' JSON-to-Arrow
    conversion (which a JSONL corpus would add, once, into the Hugging Face datasets cache)."""
    from orchestrator.data.sources import demo_path

    lines = [x for x in demo_path("kjv_pentateuch.txt").read_text().splitlines() if x.strip()]
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    written, part = 0, 0
    while written < size_bytes:
        with open(out / f"part-{part:04d}.txt", "w") as fh:
            file_bytes = 0
            while file_bytes < FILE_BYTES and written + file_bytes < size_bytes:
                chunk = "\n".join(rng.choices(lines, k=1000)) + "\n"
                fh.write(chunk)
                file_bytes += len(chunk)
        written += file_bytes
        part += 1
    return out


def train_tokenizer(out: Path) -> Path:
    from orchestrator.data.sources import demo_path
    from orchestrator.data.tokenizer import train_bpe

    if not (out / "tokenizer.json").exists():
        train_bpe([demo_path("kjv_pentateuch.txt").read_text()], 8192).save_pretrained(str(out))
    return out


def data_cfg(corpus: Path, tok: Path, cache: Path, num_proc: int):
    from orchestrator.config import DataConfig, TokenizerConfig

    return DataConfig(
        paths=[str(corpus)], cache_dir=str(cache), num_proc=num_proc, block_size=512,
        tokenizer=TokenizerConfig(path=str(tok)),
    )  # fmt: skip


def child_build(corpus: Path, tok: Path, cache: Path, num_proc: int) -> dict[str, Any]:
    from orchestrator.data import prepare_text_data

    t = time.perf_counter()
    data = prepare_text_data(data_cfg(corpus, tok, cache, num_proc))
    wall = time.perf_counter() - t
    return {
        "wall_s": wall,
        "tokens": len(data.packed.train) * data.packed.block_size,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def child_reference(corpus: Path, tok_dir: Path) -> dict[str, Any]:
    """The previous implementation: one list of all tokens, one array, split in memory."""
    from orchestrator.data.packing import pack_tokens, split_blocks
    from orchestrator.data.sources import iter_texts, resolve_files, split_pieces
    from orchestrator.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    t = time.perf_counter()

    def docs():
        for text in iter_texts(resolve_files([str(corpus)])):
            ids: list[int] = []
            for enc in tok(split_pieces(text), add_special_tokens=False)["input_ids"]:
                ids.extend(enc)
            yield ids

    train, _ = split_blocks(pack_tokens(docs(), 512, tok.eos_token_id), 0.05)
    return {
        "wall_s": time.perf_counter() - t,
        "tokens": int(train.size),
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(*args: str) -> dict[str, Any]:
    # One tokenizer thread per process: 1 vs N processes is then 1 vs N cores.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, check=True, capture_output=True,
        text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def first_step(corpus: Path, tok: Path, work: Path, num_proc: int) -> dict[str, Any]:
    """``fedray pretrain`` from a cold cache: seconds until step 1 is logged, driver VmHWM."""
    run_root, cache = work / "runs", work / f"cache-first-{time.time_ns()}"
    cmd = [
        sys.executable, "-m", "orchestrator.cli", "pretrain", f"data.paths=[{corpus}]",
        f"data.tokenizer.path={tok}", f"data.cache_dir={cache}", f"data.num_proc={num_proc}",
        "data.block_size=512", "model.n_layer=2", "model.d_model=64", "model.n_head=2",
        "train.max_steps=1", "train.global_batch_size=2", "train.micro_batch_size=2",
        "train.eval_batches=1", "scaling.num_workers=1", f"run.root={run_root}",
        f"run.name=first-{corpus.name}-{num_proc}",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = run_root / f"first-{corpus.name}-{num_proc}" / "metrics.jsonl"
    hwm, t_first = 0.0, None
    while proc.poll() is None:
        hwm = max(hwm, vm_hwm_mb(proc.pid) or 0.0)
        if t_first is None and metrics.exists() and '"step": 1' in metrics.read_text():
            t_first = time.perf_counter() - t
        time.sleep(0.2)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"fedray pretrain failed ({proc.returncode}): {err[-2000:]}")
    return {"first_step_s": t_first, "driver_peak_rss_mb": hwm, "total_s": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="0.1,0.5,2", help="GB of text, comma-separated")
    ap.add_argument("--num-proc", default="1,2", help="tokenizer process counts to compare")
    ap.add_argument("--reference-max", type=float, default=0.1, help="largest GB for the old path")
    ap.add_argument("--first-step-max", type=float, default=2.0, help="largest GB for first step")
    ap.add_argument("--work", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--out", default=str(HERE / "results" / "data_scale.md"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "build":
            res = child_build(Path(rest[0]), Path(rest[1]), Path(rest[2]), int(rest[3]))
        else:
            res = child_reference(Path(rest[0]), Path(rest[1]))
        print(json.dumps(res))
        return

    work = Path(a.work or tempfile.mkdtemp(prefix="fedray-data-scale-"))
    tok = train_tokenizer(work / "tokenizer")
    rows: list[str] = []
    for gb in (float(s) for s in a.sizes.split(",")):
        corpus = synthesize(work / f"corpus-{gb}", int(gb * 1e9))
        mb = sum(f.stat().st_size for f in corpus.iterdir()) / MB
        results: list[tuple[str, dict[str, Any]]] = []
        if gb <= a.reference_max:
            results.append(
                ("previous (one list, in memory)", run_child("reference", str(corpus), str(tok)))
            )
        for n in (int(x) for x in a.num_proc.split(",")):
            cache = work / f"cache-{gb}-{n}-{time.time_ns()}"
            results.append(
                (
                    f"cache, num_proc={n}",
                    run_child("build", str(corpus), str(tok), str(cache), str(n)),
                )
            )
        for name, r in results:
            line = (
                f"| {gb} GB ({mb:.0f} MB) | {name} | {r['wall_s']:.1f} | {mb / r['wall_s']:.2f} | "
                f"{r['tokens'] / 1e6:.1f} | {r['driver_peak_rss_mb']:.0f} | "
                f"{r.get('worker_peak_rss_mb', 0):.0f} |"
            )
            print(line, flush=True)
            rows.append(line)
        if gb <= a.first_step_max:
            n = max(int(x) for x in a.num_proc.split(","))
            fs = first_step(corpus, tok, work, n)
            line = (
                f"| {gb} GB ({mb:.0f} MB) | fedray pretrain, cold cache, num_proc={n}: first step "
                f"after {fs['first_step_s']:.1f} s (whole run {fs['total_s']:.1f} s) | | | | "
                f"{fs['driver_peak_rss_mb']:.0f} | |"
            )
            print(line, flush=True)
            rows.append(line)
    header = (
        f"\n### {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f}\n\n| corpus | path | wall s | MB/s | train tokens (M) | "
        "driver peak RSS MB | tokenizer process peak RSS MB |\n|---|---|---|---|---|---|---|\n"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as fh:
        fh.write(header + "\n".join(rows) + "\n")
    print(f"appended to {a.out}")


if __name__ == "__main__":
    main()
