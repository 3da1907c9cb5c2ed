"""One CLI convention for every ``fedray`` command: a mistake is answered at once (no ML library
imported before the config is checked), overrides go on both sides of a flag, and a rejected
config leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.cli import main

HEAVY = ("torch", "transformers", "ray", "flwr", "deepspeed", "datasets", "peft")

# Each: (argv, expected exit code). --help exits through argparse's SystemExit(0).
FAST_PATHS = [
    (["--help"], 0),
    (["presets"], 0),
    (["nonsense"], 2),
    *[
        ([cmd, "--help"], 0)
        for cmd in (
            "pretrain", "simulate", "server", "site", "certs", "site-key", "submit", "jobs",
            "report", "doctor", "compress", "tune",
        )
    ],
    (["compress", "RUN_DIR_MISSING", "--method", "int8"], 2),
    (["pretrain", "train.max_stepz=3"], 2),
    (["pretrain", "train.max_steps=-1"], 2),
    (["pretrain", "train.global_batch_size=7"], 2),
    (["pretrain", "data.paths=[/no/such/corpus.txt]"], 2),
    (["pretrain", "data.paths=[/no/such/corpus.txt]", "--dry-run"], 2),
    (["simulate", "federation.num_roundz=2"], 2),
    (["simulate", "strategy.name=nope", "--centralized"], 2),
    (["server", "federation.min_sites=0"], 2),
    (["server", "--resume", "RUN_DIR_MISSING"], 2),
    (["submit", "train.global_batch_size=7", "--dry-run"], 2),
    (["submit", "federation.num_roundz=2", "--dry-run"], 2),
    (["submit", "simulate-demo", "run.root=/r", "federation.cpus_per_site=1.5"], 2),
    (["pretrain", "--print-config"], 0),
    (["simulate", "--print-config"], 0),
    (["simulate", "--centralized", "--print-config"], 0),
    (["server", "--print-config"], 0),
    (["submit", "--print-config"], 0),
    (["submit", "simulate-demo", "--print-config"], 0),
    (["tune", "tune-demo", "tune.space.train.lr.uniform=[0.1,0.01]"], 2),
    (["tune", "tune-demo", "tune.space.train.nope.choice=[1]", "--dry-run"], 2),
    (["tune", "--resume", "RUN_DIR_MISSING"], 2),
    (["tune", "tune-demo", "tune.conditional.strategy.name.fedyogi.train.lr.choice=[0.1]"], 2),
    (["tune", "tune-demo", "--print-config"], 0),
    (["tune", "tune-demo", "--dry-run"], 0),
]  # fmt: skip

PROBE = textwrap.dedent(
    """
    import json, sys
    from orchestrator.cli import main

    HEAVY = set(sys.argv[1].split(","))
    paths = json.loads(sys.argv[2])
    report = []
    for argv in paths:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's --help
            code = e.code
        heavy = sorted({m.split(".")[0] for m in sys.modules} & HEAVY)
        report.append({"argv": argv, "code": code, "heavy": heavy})
        if heavy:
            break
    print("PROBE " + json.dumps(report))
    """
)


def test_help_config_errors_print_config_and_presets_import_no_ml_library(tmp_path: Path):
    """Run in a fresh interpreter: the first path that imports torch, transformers, Ray,
    Flower, DeepSpeed, datasets or PEFT is named."""
    paths = [
        [a.replace("RUN_DIR_MISSING", str(tmp_path / "missing")) for a in argv]
        for argv, _ in FAST_PATHS
    ]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(HEAVY), json.dumps(paths)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stderr
    report = json.loads(lines[-1].removeprefix("PROBE "))
    for (argv, code), got in zip(FAST_PATHS, report, strict=False):
        assert got["heavy"] == [], f"fedray {' '.join(argv)} imported {got['heavy']}"
        assert got["code"] == code, f"fedray {' '.join(argv)}: exit {got['code']}, not {code}"
    assert len(report) == len(FAST_PATHS)


@pytest.mark.parametrize(
    "argv",
    [
        ["pretrain", "train.max_steps=7", "--print-config", "train.lr=0.5"],
        ["pretrain", "--verbose", "train.max_steps=7", "--print-config", "train.lr=0.5"],
        ["simulate", "federation.num_rounds=7", "--centralized", "train.lr=0.5", "--print-config"],
        ["simulate", "--print-config", "federation.num_rounds=7", "train.lr=0.5"],
        ["server", "federation.num_rounds=7", "--insecure", "train.lr=0.5", "--print-config"],
        ["server", "federation.num_rounds=7", "--port", "9999", "train.lr=0.5", "--print-config"],
        ["submit", "train.max_steps=7", "--print-config", "train.lr=0.5"],
    ],
)
def test_overrides_work_on_both_sides_of_a_flag(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert ("max_steps: 7" in out or "num_rounds: 7" in out) and "lr: 0.5" in out


def test_config_file_then_flags_then_overrides(tmp_path: Path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("train:\n  max_steps: 11\n")
    assert main(["pretrain", str(job), "--print-config", "train.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 11" in out and "lr: 0.5" in out


@pytest.mark.parametrize(
    ("argv", "wording"),
    [
        (["pretrain", "train.max_stepz=3"], "train.max_stepz"),
        (["simulate", "federation.num_roundz=2", "--centralized"], "federation.num_roundz"),
        (["server", "federation.min_sites=0"], "federation.min_sites"),
        (["submit", "train.global_batch_size=7"], "train.global_batch_size"),
        (["certs", "EXISTING"], "exists"),
        (["site-key", "EXISTING"], "exists"),
        (["server", "--resume", "MISSING"], "--resume needs the directory of a run"),
        (["site", "--server", "h:1", "--data", "MISSING"], "MISSING"),
        (["report", "MISSING"], "MISSING"),
        (["compress", "MISSING", "--method", "int8"], "MISSING"),
        (["nonsense"], "unknown command"),
    ],
)
def test_every_command_reports_bad_input_as_one_config_error_line(
    argv, wording, tmp_path: Path, capsys
):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "ca.key").write_text("x")  # a private key is never overwritten
    existing_key = tmp_path / "key"
    existing_key.write_text("x")
    subst = {
        "EXISTING": str(existing if argv[0] == "certs" else existing_key),
        "MISSING": str(tmp_path / "missing"),
    }
    argv = [subst.get(a, a) for a in argv]
    wording = subst.get(wording, wording)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and err.strip().count("\n") == 0, err
    assert wording in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["pretrain", "train.max_stepz=3"],
        ["pretrain", "data.paths=[MISSING]"],
        ["simulate", "federation.num_rounds=0"],
        ["simulate", "data.paths=[MISSING]"],
        ["simulate", "data.paths=[MISSING]", "--centralized"],
        ["server", "federation.min_sites=0", "--insecure"],
        ["server", "data.paths=[MISSING]", "--insecure", "--port", "0"],
    ],
)
def test_a_rejected_config_leaves_no_run_directory(argv, tmp_path: Path, capsys):
    run_dir = tmp_path / "runs" / "job"
    argv = [a.replace("MISSING", str(tmp_path / "missing.csv")) for a in argv]
    assert main([*argv, f"run.dir={run_dir}"]) == 2
    assert "config error:" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
