"""Pretraining data at scale: driver memory and time vs corpus size, tokenization throughput.

    python bench/bench_data_scale.py                       # 0.1, 0.5 and 2 GB of text
    python bench/bench_data_scale.py --sizes 0.1 --throughput-size 0.1

For each size a corpus is synthesized from the bundled demo corpus (its lines shuffled into
plain-text files of 64 MB) and tokenized with a byte-level BPE trained once
on the demo corpus (vocab 8192; ``data.tokenizer.path``, so no tokenizer training is timed).
Every measurement runs in a fresh process with a cold cache, one tokenizer thread per process
(``TOKENIZERS_PARALLELISM=false``: N processes = N cores), and records the load average before
it starts (the machine may be shared):

- ``throughput`` (``--throughput-size``, one corpus): the token cache built by the inline path
  (``data.num_proc=1``: the driver tokenizes), a pool of 1 and of 2 tokenizer processes, and
  Ray tasks on a local Ray with 2 CPUs (the path ``fedray pretrain`` takes with
  ``cluster.address``; Ray's start is timed separately, a cluster is already running): MB of
  text/s, tokens/s and the ratio to the inline path, driver and tokenizer-process peak RSS;
- ``scale`` (every size): the token cache with ``--num-proc`` processes (time to a ready cache,
  driver peak RSS), then ``fedray pretrain`` (1 worker, tiny model, 1 step) on that ready cache:
  seconds from launch until step 1 is in metrics.jsonl, and the driver's peak RSS (VmHWM).
  Cold-cache time to first step = the two added;
- ``reference``: the previous implementation (every token in one Python list, packed into one
  array on the driver), only for sizes up to ``--reference-max`` (default 0: it needs ~37 bytes
  per token, ~18 GB at 2 GB of text).

Corpora and caches are deleted after each size. Results are printed and appended to
bench/results/data_scale.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
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


def data_cfg(corpus: Path, tok: Path, cache: Path, num_proc: int) -> Any:
    from orchestrator.config import DataConfig, TokenizerConfig

    return DataConfig(
        paths=[str(corpus)], cache_dir=str(cache), num_proc=num_proc, block_size=512,
        tokenizer=TokenizerConfig(path=str(tok)),
    )  # fmt: skip


def child_build(corpus: Path, tok: Path, cache: Path, mode: str) -> dict[str, Any]:
    """Build the token cache; ``mode``: ``N`` (``data.num_proc=N``), ``pool1`` (one tokenizer
    process instead of the inline path) or ``rayN`` (Ray tasks on a local Ray with N CPUs)."""
    from orchestrator.data import prepare_text_data, token_writer

    ray_start_s = None
    with contextlib.ExitStack() as stack:
        if mode == "pool1":  # bench only: num_proc=1 means in-process, force a 1-process pool
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            def pool(tok: Any) -> ProcessPoolExecutor:
                return ProcessPoolExecutor(
                    1, mp_context=mp.get_context("spawn"), initializer=token_writer._init_worker,
                    initargs=(tok,),
                )  # fmt: skip

            token_writer._Inline = pool  # type: ignore[assignment,misc]
            num_proc, on_cluster = 1, False
        elif mode.startswith("ray"):
            from orchestrator.cluster import local_ray

            t = time.perf_counter()
            env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
            stack.enter_context(local_ray(int(mode[3:]), env, log_to_driver=False))
            ray_start_s = time.perf_counter() - t
            num_proc, on_cluster = int(mode[3:]), True
        else:
            num_proc, on_cluster = int(mode), False
        t = time.perf_counter()
        data = prepare_text_data(data_cfg(corpus, tok, cache, num_proc), on_cluster=on_cluster)
        wall = time.perf_counter() - t
    manifest = json.loads((data.packed.path / "manifest.json").read_text())
    return {
        "wall_s": wall,
        "ray_start_s": ray_start_s,
        "tokens": int(manifest["total_tokens"]),
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # Ray's task workers are the raylet's children, not this process's: not measured here
        "worker_peak_rss_mb": None
        if ray_start_s is not None
        else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
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


def first_step(corpus: Path, tok: Path, work: Path, cache: Path, num_proc: int) -> dict[str, Any]:
    """``fedray pretrain`` on ``cache``: seconds until step 1 is logged, the driver's VmHWM."""
    run_root = work / "runs"
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
    err_file = work / "first-step.stderr"  # a file, not a pipe: a full pipe would block the run
    with open(err_file, "w") as err_fh:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err_fh)
    metrics = run_root / f"first-{corpus.name}-{num_proc}" / "metrics.jsonl"
    hwm, t_first = 0.0, None
    while proc.poll() is None:
        hwm = max(hwm, vm_hwm_mb(proc.pid) or 0.0)
        if t_first is None and metrics.exists() and '"step": 1' in metrics.read_text():
            t_first = time.perf_counter() - t
        time.sleep(0.2)
    err = err_file.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"fedray pretrain failed ({proc.returncode}): {err[-2000:]}")
    return {"first_step_s": t_first, "driver_peak_rss_mb": hwm, "total_s": time.perf_counter() - t}


def load() -> float:
    return os.getloadavg()[0]


def row(corpus: str, path: str, r: dict[str, Any], mb: float, base: float | None) -> str:
    ratio = f"{base / r['wall_s']:.2f}x" if base else ""
    rss = r.get("worker_peak_rss_mb") or 0
    return (
        f"| {corpus} | {path} | {r['load']:.1f} | {r['wall_s']:.1f} | {mb / r['wall_s']:.2f} | "
        f"{r['tokens'] / r['wall_s'] / 1e3:.0f} | {ratio} | {r['driver_peak_rss_mb']:.0f} | "
        f"{rss:.0f} |" if rss else
        f"| {corpus} | {path} | {r['load']:.1f} | {r['wall_s']:.1f} | {mb / r['wall_s']:.2f} | "
        f"{r['tokens'] / r['wall_s'] / 1e3:.0f} | {ratio} | {r['driver_peak_rss_mb']:.0f} | - |"
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="0.1,0.5,2", help="GB of text, comma-separated")
    ap.add_argument(
        "--num-proc", type=int, default=2, help="tokenizer processes for the scale rows"
    )
    ap.add_argument("--throughput-size", type=float, default=0.1, help="GB for the path comparison")
    ap.add_argument("--throughput-modes", default="1,pool1,2,ray2", help="paths to compare")
    ap.add_argument("--reference-max", type=float, default=0.0, help="largest GB for the old path")
    ap.add_argument("--first-step-max", type=float, default=2.0, help="largest GB for first step")
    ap.add_argument("--work", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--out", default=str(HERE / "results" / "data_scale.md"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "build":
            res = child_build(Path(rest[0]), Path(rest[1]), Path(rest[2]), rest[3])
        else:
            res = child_reference(Path(rest[0]), Path(rest[1]))
        print(json.dumps(res))
        return

    work = Path(a.work or tempfile.mkdtemp(prefix="fedray-data-scale-"))
    tok = train_tokenizer(work / "tokenizer")
    rows: list[str] = []
    names = {
        "1": "inline (`num_proc=1`)",
        "pool1": "1 tokenizer process",
        "ray2": "Ray tasks, 2 CPUs",
    }

    def emit(line: str) -> None:
        print(line, flush=True)
        rows.append(line)

    def build(corpus: Path, mode: str) -> tuple[Path, dict[str, Any]]:
        cache = work / f"cache-{corpus.name}-{mode}"
        before = load()
        return cache, {
            **run_child("build", str(corpus), str(tok), str(cache), mode),
            "load": before,
        }

    try:
        for gb in (float(s) for s in a.sizes.split(",")):
            corpus = synthesize(work / f"corpus-{gb}", int(gb * 1e9))
            mb = sum(f.stat().st_size for f in corpus.iterdir()) / MB
            label = f"{gb} GB ({mb:.0f} MB)"
            ready: tuple[Path, dict[str, Any]] | None = None
            if gb == a.throughput_size:
                base = None
                for mode in a.throughput_modes.split(","):
                    cache, r = build(corpus, mode)
                    base = base or (r["wall_s"] if mode == "1" else None)
                    start = f" (+{r['ray_start_s']:.1f} s Ray start)" if r["ray_start_s"] else ""
                    emit(row(label, names.get(mode, f"{mode} processes") + start, r, mb, base))
                    if mode == str(a.num_proc):
                        ready = (cache, r)
                    else:
                        shutil.rmtree(cache, ignore_errors=True)
            if gb <= a.reference_max:
                r = {**run_child("reference", str(corpus), str(tok)), "load": load()}
                emit(row(label, "previous (one list, in memory)", r, mb, None))
            if ready is None:
                ready = build(corpus, str(a.num_proc))
                emit(
                    row(label, f"{a.num_proc} processes: time to a ready cache", ready[1], mb, None)
                )
            if gb <= a.first_step_max:
                before = load()
                fs = first_step(corpus, tok, work, ready[0], a.num_proc)
                emit(
                    f"| {label} | `fedray pretrain` on the ready cache: first step after "
                    f"{fs['first_step_s']:.1f} s (whole run {fs['total_s']:.1f} s); cold cache: "
                    f"{ready[1]['wall_s'] + fs['first_step_s']:.0f} s | {before:.1f} | | | | | "
                    f"{fs['driver_peak_rss_mb']:.0f} | |"
                )
            shutil.rmtree(ready[0], ignore_errors=True)
            shutil.rmtree(corpus, ignore_errors=True)
            shutil.rmtree(work / "runs", ignore_errors=True)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    header = (
        f"\n### {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs\n\n| corpus | path | "
        "load avg before | wall s | MB/s | k tokens/s | vs inline | driver peak RSS MB | "
        "tokenizer process peak RSS MB |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as fh:
        fh.write(header + "\n".join(rows) + "\n")
    print(f"appended to {a.out}")


if __name__ == "__main__":
    main()
