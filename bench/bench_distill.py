"""Distillation vs training from scratch: does a teacher help a smaller student?

    python bench/bench_distill.py                       # teacher + 2 seeds x 2 students
    python bench/bench_distill.py --configs 0.5:2 1:1 --work /tmp/distill   # 2 settings, reusable

In one invocation, with `fedray pretrain` on the bundled demo corpus (2 CPU workers, DDP):
1. the teacher: the default preset's model (pretrain-tiny: GPT-2, 2 layers, d_model 128);
2. per seed, a student of half the teacher's depth (1 layer, same width) trained from scratch;
3. per seed and per ``alpha:temperature`` of --configs, the same student, same steps, data
   order and seed, distilled from the teacher's export.
With --work DIR the runs are kept there and a rerun reuses every run already complete (the
teacher and the scratch students when only --configs changes); --work unset = a temp dir.
Reported: validation perplexity on the held-out blocks (data.val_fraction of the corpus, never
trained on) at the last step, and the share of the scratch student's perplexity gap to the
teacher that distillation closes: (ppl_scratch - ppl_distilled) / (ppl_scratch - ppl_teacher).
Target: >= 0.5. Every run's metrics.jsonl and summary.json are kept under --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Ray gives its dashboard 30-60 s to start; on a loaded 2-core machine it can take longer (as in
# tests/conftest.py).
ENV = {
    **os.environ,
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300",
    "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "240",
}
ROOT = HERE.parent


def run(name: str, overrides: list[str], work: Path, out: Path) -> dict:
    """One `fedray pretrain pretrain-tiny` run (or its earlier result in ``work``); its raw
    files copied to ``out/name``."""
    cmd = [sys.executable, "-m", "orchestrator.cli", "pretrain", "pretrain-tiny"]
    cmd += [f"run.root={work}", f"run.name={name}", f"data.cache_dir={work / 'cache'}"]
    cmd += overrides
    dest, done = out / name, work / name / "bench.json"
    dest.mkdir(parents=True, exist_ok=True)
    if done.is_file():
        res = {**json.loads(done.read_text()), "reused": True}
    else:
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV)
        wall = time.time() - t0
        (work / name).mkdir(parents=True, exist_ok=True)
        (work / name / "console.txt").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            shutil.copy(work / name / "console.txt", dest / "console.txt")
            raise SystemExit(f"{name} failed (exit {proc.returncode}); see {dest}/console.txt")
        rows = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
        final = [r for r in rows if "val_ppl" in r][-1]
        res = {"name": name, "val_loss": final["val_loss"], "val_ppl": final["val_ppl"],
               "wall_s": round(wall, 1), "command": " ".join(cmd[1:])}  # fmt: skip
        done.write_text(json.dumps(res))
    for f in ("metrics.jsonl", "summary.json", "config.yaml", "console.txt"):
        if (work / name / f).is_file():
            shutil.copy(work / name / f, dest / f)
    print(f"{name}: val_ppl {res['val_ppl']:.2f} ({res['wall_s']:.0f} s)", flush=True)
    return res


def students(args: argparse.Namespace, work: Path, teacher: dict) -> list[dict]:
    """Per seed: the scratch student, then one distilled student per --configs entry."""
    common = [f"train.max_steps={args.steps}", "train.eval_every=0", "train.log_every=50"]
    export = work / "teacher" / "export"
    rows = []
    for seed in args.seeds:
        s = [*common, f"model.n_layer={args.student_layers}", f"train.seed={seed}"]
        scratch = run(f"scratch-s{seed}", s, work, args.out)
        for conf in args.configs:
            alpha, temp = (float(v) for v in conf.split(":"))
            kd = [f"distill.teacher={export}", f"distill.alpha={alpha}",
                  f"distill.temperature={temp}"]  # fmt: skip
            distilled = run(f"distilled-a{alpha:g}-T{temp:g}-s{seed}", [*s, *kd], work, args.out)
            gap = scratch["val_ppl"] - teacher["val_ppl"]
            rows.append({"seed": seed, "config": f"{alpha:g}:{temp:g}", "scratch": scratch,
                         "distilled": distilled,
                         "gap_closed": (scratch["val_ppl"] - distilled["val_ppl"]) / gap})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of every run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--student-layers", type=int, default=1)
    ap.add_argument("--configs", nargs="+", default=["0.5:2"], help="alpha:temperature pairs")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distill")
    ap.add_argument("--work", type=Path, default=None, help="keep (and reuse) the runs here")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        common = [f"train.max_steps={args.steps}", "train.eval_every=0", "train.log_every=50"]
        teacher = run("teacher", [*common, "train.seed=0"], work, args.out)
        rows = students(args, work, teacher)
    configs = sorted({r["config"] for r in rows})
    mean = {c: statistics.mean(r["gap_closed"] for r in rows if r["config"] == c) for c in configs}
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "teacher": teacher,
              "runs": rows, "mean_gap_closed": mean,
              "total_wall_s": round(time.time() - t0, 1)}  # fmt: skip
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"\n| run | val ppl | gap closed |\n|---|---|---|\n| teacher | "
          f"{teacher['val_ppl']:.2f} | - |")  # fmt: skip
    for r in rows:
        print(f"| scratch, seed {r['seed']} | {r['scratch']['val_ppl']:.2f} | - |\n"
              f"| distilled {r['config']}, seed {r['seed']} | {r['distilled']['val_ppl']:.2f} "
              f"| {r['gap_closed']:.3f} |")  # fmt: skip
    print(f"\nmean gap closed by alpha:T: {mean} (target >= 0.5); {result['total_wall_s']} s")


if __name__ == "__main__":
    main()
