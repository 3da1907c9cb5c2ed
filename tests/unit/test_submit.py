"""`fedray submit` / `fedray jobs` without a cluster: address rules, what gets uploaded, the
size check, cluster-side paths, --dry-run, a dead dashboard (exit 2, in seconds), and which
command a config is submitted to (a federated config runs `fedray simulate`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config import PretrainJob, load_config
from orchestrator.config.loader import ConfigError
from orchestrator.jobs import dashboard_address
from orchestrator.processes.network import free_port
from orchestrator.submit import (
    EXCLUDES,
    build_submission,
    check_upload_size,
    prepare_job,
    scan_upload,
    submit_command,
)


def job(*overrides: str) -> PretrainJob:
    return load_config(PretrainJob, None, list(overrides), default_preset="pretrain-tiny")


def test_dashboard_address_order():
    assert dashboard_address("http://h:8265/", {}) == "http://h:8265"
    assert dashboard_address(None, {"RAY_API_SERVER_ADDRESS": "http://a:1"}) == "http://a:1"
    assert dashboard_address(None, {"RAY_ADDRESS": "http://b:2"}) == "http://b:2"
    # A GCS RAY_ADDRESS (HOST:6379) is not the Job Submission API: fall back to the default.
    assert dashboard_address(None, {"RAY_ADDRESS": "10.0.0.1:6379"}) == "http://127.0.0.1:8265"
    with pytest.raises(ConfigError, match="dashboard URL"):
        dashboard_address("10.0.0.1:6379", {})


def test_upload_excludes_caches_and_checks_size(tmp_path: Path):
    pkg = tmp_path / "pkg"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"x" * 5000)
    (pkg / "runs" / "old").mkdir(parents=True)
    (pkg / "runs" / "old" / "ckpt.pt").write_bytes(b"x" * 5000)
    (pkg / "m.py").write_text("x = 1\n")
    (pkg / "runs.py").write_text("y = 2\n")  # only a path part equal to a pattern is dropped
    up = scan_upload({"pkg": pkg}, EXCLUDES)
    assert sorted(name for name, _ in up.files) == ["pkg/m.py", "pkg/runs.py"]
    assert up.total_bytes == 12
    (pkg / "big.bin").write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(ConfigError) as e:
        check_upload_size(scan_upload({"pkg": pkg}), max_mb=1)
    assert e.value.key == "--max-upload-mb" and "pkg/big.bin (2.0 MiB)" in str(e.value)


def test_cluster_side_paths_must_be_absolute():
    with pytest.raises(ConfigError) as e:
        prepare_job(job())  # run.root=runs (relative)
    assert e.value.key == "run.root" and "run.root=/shared/runs" in str(e.value)
    with pytest.raises(ConfigError) as e:
        prepare_job(job("run.root=/shared/runs", "data.paths=[corpus.txt]"))
    assert e.value.key == "data.paths"
    with pytest.raises(ConfigError) as e:
        prepare_job(job("run.root=/r", "cluster.address=10.0.0.1:6379"))
    assert e.value.key == "cluster.address"
    ok = prepare_job(job("run.root=/shared/runs", "data.cache_dir=~/.cache/fedray"))
    assert ok.cluster.address == "auto" and ok.run.name.startswith("pretrain-")


def test_submission_ships_config_and_this_checkout(tmp_path: Path):
    sub = build_submission(prepare_job(job("run.root=/r", "run.name=x")), tmp_path)
    assert sub.entrypoint == "python -m orchestrator.cli pretrain config.yaml"
    assert (tmp_path / "config.yaml").read_text().count("address: auto") == 1
    env = sub.runtime_env
    assert env["working_dir"] == str(tmp_path) and "__pycache__" in env["excludes"]
    assert [Path(p).name for p in env["py_modules"]] == ["orchestrator", "clients", "strategies"]
    assert sub.metadata["fedray_run_dir"] == "/r/x"
    names = {n for n, _ in sub.upload.files}
    assert "working_dir/config.yaml" in names and "orchestrator/cli.py" in names
    assert not any("__pycache__" in n for n in names)
    bare = build_submission(
        prepare_job(job("run.root=/r")), tmp_path, ship_code=False, pip=["fedray==0.1.0"]
    )
    assert "py_modules" not in bare.runtime_env and bare.runtime_env["pip"] == ["fedray==0.1.0"]


def test_dry_run_needs_no_cluster(capsys: pytest.CaptureFixture[str]):
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens: --dry-run must not ask
    assert main(["submit", "run.root=/r", "--dry-run", "--address", address]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out.split("# launch plan\n", 1)[1])["submission"]
    assert plan["address"] == address and plan["upload"]["mib"] < 10


def test_invalid_config_is_exit_2_like_pretrain(capsys: pytest.CaptureFixture[str]):
    assert main(["submit", "train.global_batch_size=7", "run.root=/r", "--dry-run"]) == 2
    assert "train.global_batch_size" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["jobs", "list"], ["submit", "run.root=/r"]])
def test_dead_dashboard_is_exit_2_in_seconds(argv: list[str], capsys: pytest.CaptureFixture[str]):
    t0 = time.monotonic()
    assert main([*argv, "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    assert time.monotonic() - t0 < 10
    assert "no Ray dashboard answers" in capsys.readouterr().err


# ---- federated configs: `fedray submit` runs `fedray simulate` on the cluster -----------------


@pytest.mark.parametrize(
    ("keys", "source", "command"),
    [
        ({"federation", "run"}, None, "simulate"),
        ({"strategy"}, "my.yaml", "simulate"),
        ({"task", "model", "data"}, "simulate-demo", "simulate"),
        ({"scaling", "train"}, "my.yaml", "pretrain"),
        ({"backend"}, None, "pretrain"),
        ({"tune", "federation"}, "my-tune.yaml", "tune"),
        ({"run"}, None, "pretrain"),  # no file: the pretraining default preset, as before
        (set(), None, "pretrain"),
    ],
)
def test_the_sections_tell_the_command(keys: set[str], source: str | None, command: str):
    assert submit_command(keys, source) == command


def test_sections_that_do_not_tell_or_contradict_are_config_errors():
    with pytest.raises(ConfigError) as e:
        submit_command({"model", "data", "train", "run"}, "my.yaml")
    msg = str(e.value)
    assert "'my.yaml'" in msg and "data, model, run, train" in msg
    assert "`scaling: {}`" in msg and "`federation: {}`" in msg  # how to fix it
    with pytest.raises(ConfigError) as e:
        submit_command({"scaling", "federation", "strategy"}, None)
    assert e.value.key == "scaling"
    assert "(scaling)" in str(e.value) and "(federation, strategy)" in str(e.value)


def submission_plan(out: str) -> tuple[str, dict]:
    config, plan = out.split("# launch plan\n", 1)
    return config, json.loads(plan)


def test_federated_dry_run_shows_a_simulate_submission(capsys: pytest.CaptureFixture[str]):
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens: --dry-run must not ask
    argv = ["submit", "simulate-demo", "run.root=/shared/runs", "run.name=fed", "--dry-run"]
    assert main([*argv, "--address", address]) == 0
    config, plan = submission_plan(capsys.readouterr().out)
    sub = plan["submission"]
    assert sub["entrypoint"] == "python -m orchestrator.cli simulate config.yaml"
    assert sub["metadata"] == {"fedray_run_dir": "/shared/runs/fed", "fedray_command": "simulate"}
    assert "federation:" in config and "address: auto" in config
    assert "demo:tweets-gpt2" in config  # the bundled model travels with the shipped code
    # fedray simulate's own pre-start checks ran here: on a cluster no embedded-Ray CPU count.
    assert plan["federation_config"]["num-supernodes"] == 4
    assert "init-args-num-cpus" not in plan["federation_config"]


def test_overrides_alone_can_make_a_federated_submission(capsys: pytest.CaptureFixture[str]):
    argv = ["submit", "federation.num_rounds=2", "run.root=/r", "--print-config"]
    assert main(argv) == 0
    assert "num_rounds: 2" in capsys.readouterr().out  # the simulate-demo preset, overridden


@pytest.mark.parametrize(
    ("args", "wording"),
    [
        (["federation.num_roundz=2", "run.root=/r"], "federation.num_roundz"),  # the schema
        (["simulate-demo"], "run.root"),  # relative run root (runs)
        (["simulate-demo", "run.root=/r", "data.paths=[tweets.csv]"], "data.paths"),
        (["simulate-demo", "run.root=/r", "cluster.address=10.0.0.1:6379"], "cluster.address"),
        (["simulate-demo", "run.root=/r", "federation.cpus_per_site=1.5"], "cpus_per_site"),
        (["simulate-demo", "run.root=/r", "scaling.num_workers=2"], "scaling"),
        (["SHARED_ONLY"], "cannot tell which to run"),
    ],
)
def test_federated_config_errors_are_exit_2_before_any_cluster_is_asked(
    args: list[str], wording: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    shared = tmp_path / "shared.yaml"
    shared.write_text("model:\n  n_layer: 1\nrun:\n  root: /r\n")
    args = [str(shared) if a == "SHARED_ONLY" else a for a in args]
    # Nothing listens at the address: a config error must come first (no upload, no probe).
    assert main(["submit", *args, "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert wording in err and "no Ray dashboard answers" not in err
