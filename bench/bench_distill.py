"""Distillation vs training from scratch: does a teacher help a smaller student?

    python bench/bench_distill.py                       # teacher + 2 seeds x 2 students
    python bench/bench_distill.py --seeds 0 1 2 --steps 300

In one invocation, with `fedray pretrain` on the bundled demo corpus (2 CPU workers, DDP):
1. the teacher: the default preset's model (pretrain-tiny: GPT-2, 2 layers, d_model 128);
2. per seed, a student of half the teacher's depth (1 layer, same width) trained from scratch;
3. per seed, the same student, same steps, data order and seed, distilled from the teacher's
   export (distill.teacher, alpha and temperature from the flags).
Reported: validation perplexity on the held-out blocks (data.val_fraction of the corpus, never
trained on) at the last step, and the share of the scratch student's perplexity gap to the
teacher that distillation closes: (ppl_scratch - ppl_distilled) / (ppl_scratch - ppl_teacher).
Target: >= 0.5. Every run's metrics.jsonl and summary.json are kept under --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run(name: str, overrides: list[str], work: Path, out: Path) -> dict:
    """One `fedray pretrain pretrain-tiny` run; its raw files copied to ``out/name``."""
    cmd = [sys.executable, "-m", "orchestrator.cli", "pretrain", "pretrain-tiny"]
    cmd += [f"run.root={work}", f"run.name={name}", f"data.cache_dir={work / 'cache'}"]
    cmd += overrides
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    dest = out / name
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "console.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {dest / 'console.txt'}")
    for f in ("metrics.jsonl", "summary.json", "config.yaml"):
        shutil.copy(work / name / f, dest / f)
    rows = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "val_ppl" in r][-1]
    print(f"{name}: val_ppl {final['val_ppl']:.2f} ({wall:.0f} s)", flush=True)
    return {"name": name, "val_loss": final["val_loss"], "val_ppl": final["val_ppl"],
            "wall_s": round(wall, 1), "command": " ".join(cmd[1:])}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of every run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--student-layers", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distill")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = [f"train.max_steps={args.steps}", "train.eval_every=0", "train.log_every=50"]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="fedray-bench-distill-") as tmp:
        work = Path(tmp)
        teacher = run("teacher", [*common, "train.seed=0"], work, args.out)
        export = work / "teacher" / "export"
        student = [*common, f"model.n_layer={args.student_layers}"]
        kd = [f"distill.teacher={export}", f"distill.alpha={args.alpha}",
              f"distill.temperature={args.temperature}"]  # fmt: skip
        rows = []
        for seed in args.seeds:
            s = [*student, f"train.seed={seed}"]
            scratch = run(f"scratch-s{seed}", s, work, args.out)
            distilled = run(f"distilled-s{seed}", [*s, *kd], work, args.out)
            gap = scratch["val_ppl"] - teacher["val_ppl"]
            closed = (scratch["val_ppl"] - distilled["val_ppl"]) / gap if gap > 0 else float("nan")
            rows.append({"seed": seed, "scratch": scratch, "distilled": distilled,
                         "gap_closed": closed})  # fmt: skip
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "teacher": teacher,
        "runs": rows,
        "mean_gap_closed": statistics.mean(r["gap_closed"] for r in rows),
        "total_wall_s": round(time.time() - t0, 1),
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"\n| run | val ppl | wall s |\n|---|---|---|\n| teacher (2 layers) | "
          f"{teacher['val_ppl']:.2f} | {teacher['wall_s']} |")  # fmt: skip
    for r in rows:
        for kind in ("scratch", "distilled"):
            print(f"| {kind} student, seed {r['seed']} | {r[kind]['val_ppl']:.2f} | "
                  f"{r[kind]['wall_s']} |")  # fmt: skip
    print(
        f"\ngap closed per seed: {[round(r['gap_closed'], 3) for r in rows]}; "
        f"mean {result['mean_gap_closed']:.3f} (target >= 0.5); {result['total_wall_s']} s"
    )


if __name__ == "__main__":
    main()
