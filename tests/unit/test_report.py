"""fedray report: run directories -> PNG plots + a self-contained report.html.

Synthetic metrics.jsonl files in the exact shapes the runners write (pretraining: one row per
step from pretrain/loop.py + MetricsSink; federated: one row per round from
federated/rounds.py), bad input (exit 2, one line naming the path), and one tiny real federated
run on the in-process LocalGrid."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from orchestrator.commands.report import main
from orchestrator.report import build_report, default_out, report_hint
from orchestrator.report.html import summary_row
from orchestrator.report.load import ReportError, labels_for, load_run
from orchestrator.report.plots import federated_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(d: Path, rows: list[Any], config: str | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    )
    if config is not None:
        (d / "config.yaml").write_text(config)
    return d


def pretrain_rows(steps: int = 6, eval_every: int = 3, t0: float = 20.0) -> list[dict]:
    rows: list[dict] = [{"time": 0.1, "wall_time": 1000.1, "event": "training started"}]
    for s in range(1, steps + 1):
        r = {
            "time": t0 + s,
            "wall_time": 1000.0 + t0 + s,
            "step": s,
            "loss": 8.0 - 0.1 * s,
            "lr": 1e-4 * s,
            "grad_norm": 2.0 - 0.1 * s,
            "step_time": 0.2,
            "tokens_per_s": 10000.0 + s,
        }
        if s % eval_every == 0 or s == steps:
            r["val_loss"] = 7.9 - 0.1 * s
            r["val_ppl"] = math.exp(r["val_loss"])
        rows.append(r)
    rows.append({"time": t0 + steps + 1, "wall_time": 1000.0 + t0 + steps + 1, "event": "done"})
    return rows


PRETRAIN_CONFIG = "backend: ddp\ntrain:\n  max_steps: 6\n  eval_every: 3\n"


def fed_rows(rounds: int = 3, task: str = "classification", sites: int = 3) -> list[dict]:
    rows = []
    for r in range(rounds + 1):
        ev: dict[str, float] = {"eval-loss": 1.2 - 0.1 * r, "num-examples": 300}
        if task == "classification":
            ev |= {"accuracy": 0.3 + 0.1 * r, "macro-f1": 0.2 + 0.1 * r}
        else:
            ev |= {"eval-loss": 7.5 - 0.5 * r, "perplexity": math.exp(7.5 - 0.5 * r)}
        site_rows: dict[str, dict] = {}
        for i in range(sites):
            s: dict[str, Any] = {"eval-loss": ev["eval-loss"] + 0.05 * i, "eval-examples": 100}
            if task == "classification":
                s |= {"accuracy": ev["accuracy"] - 0.02 * i, "macro-f1": ev["macro-f1"] - 0.01 * i}
            else:
                s["perplexity"] = ev["perplexity"] * (1 + 0.1 * i)
            if r > 0:
                s |= {"train-loss": 1.0 - 0.1 * r + 0.01 * i, "num-examples": 400}
            site_rows[f"site-{i}"] = s
        row: dict[str, Any] = {
            "round": r,
            "eval": ev,
            "sites": site_rows,
            "bytes_up": 0 if r == 0 else 1_000_000 * sites,
            "bytes_down": 2_000_000 * sites,
            "round_time_s": 10.0,
            "elapsed_s": 20.0 + 10.0 * r,
        }
        if r > 0:
            row["train"] = {
                "train-loss": 1.0 - 0.1 * r,
                "sites-accepted": sites - 1 if r == 2 else sites,
                "sites-rejected": 1 if r == 2 else 0,
                "bytes-received": 1_000_000 * sites,
            }
            row["dropped"] = []
            row["skipped"] = False
        rows.append(row)
    # Round 2: site-2 rejected, site-1 clipped by the server (notes as strategies write them).
    rows[2]["sites"]["site-2"]["rejected"] = "non-finite values (NaN) in 'w'"
    rows[2]["sites"]["site-1"]["aggregation"] = "clipped: norm 12.3 > 5"
    return rows


def fed_config(task: str = "classification", rounds: int = 3) -> str:
    return f"task:\n  kind: {task}\nfederation:\n  num_rounds: {rounds}\n  num_sites: 3\n"


def pngs(d: Path) -> set[str]:
    return {p.name for p in d.glob("*.png")}


def assert_self_contained(page: Path) -> str:
    """The page embeds every PNG next to it (byte for byte) and nothing else; each decodes."""
    text = page.read_text()
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in text and "<script" not in text.lower()
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    files = {p.read_bytes() for p in page.parent.glob("*.png")}
    assert embedded == files, "report.html must embed exactly the PNG files next to it"
    for png in files:
        with Image.open(io.BytesIO(png)) as im:
            im.load()  # decodes the whole image
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    return text


# ---- one run ----------------------------------------------------------------------------------


def test_pretrain_run_gets_its_plots_and_html_next_to_it(tmp_path):
    run = write_run(tmp_path / "pre", pretrain_rows(), PRETRAIN_CONFIG)
    rep = build_report([run])
    assert rep.html == run / "report" / "report.html"
    assert pngs(run / "report") == {
        "loss.png",
        "perplexity.png",
        "lr.png",
        "grad-norm.png",
        "throughput.png",
    }
    for p in rep.pngs:
        assert p.read_bytes().startswith(PNG_MAGIC)
    text = assert_self_contained(rep.html)
    assert text.count("<img") == 5
    # Summary: final train loss 8.0-0.6, final val loss 7.9-0.6, 6 of 6 steps, and the wall
    # time from the first to the last row, events included: 1027 - 1000.1.
    assert "6 / 6 steps" in text
    assert ">7.4<" in text and ">7.3<" in text
    assert ">26.9<" in text
    assert "training started" in text and "backend: ddp" in text


def test_pretrain_summary_json_wall_time_and_mfu(tmp_path):
    rows = pretrain_rows()
    for r in rows:
        if "step" in r:
            r["mfu"] = 0.42
    run = write_run(tmp_path / "gpu", rows, PRETRAIN_CONFIG)
    (run / "summary.json").write_text(json.dumps({"final_step": 6, "wall_s": 123.4}))
    text = build_report([run]).html.read_text()
    assert "123.4" in text and "42.0%" in text


def test_federated_run_plots_global_per_site_bytes_sites_epsilon(tmp_path):
    rows = fed_rows()
    for r in rows[1:]:
        r["epsilon"] = 0.5 * r["round"]
    rows[1]["attack"] = {"kind": "scale", "sites": ["site-0"]}
    run = write_run(tmp_path / "fed", rows, fed_config())
    rep = build_report([run])
    assert pngs(run / "report") == {
        "accuracy.png",
        "macro-f1.png",
        "eval-loss.png",
        "train-loss.png",
        "bytes.png",
        "sites.png",
        "epsilon.png",
    }
    text = assert_self_contained(rep.html)
    assert "3 / 3 rounds" in text
    assert "0.6 (start 0.3)" in text  # accuracy final (start)
    assert "Simulated attack <b>scale</b> by site-0" in text
    # Totals: 3 rounds x 3 MB up; round 0 included in down (4 x 6 MB).
    assert ">9<" in text and ">24<" in text


def test_wire_bytes_and_nested_epsilon_are_plotted_when_present(tmp_path):
    """``bytes-up``/``bytes-down`` (bytes as encoded on the wire) win over the array estimate;
    ``privacy.epsilon`` counts as epsilon; a run without either has no such plot."""
    rows = fed_rows()
    for r in rows:
        r["bytes-up"], r["bytes-down"] = 500_000 * r["round"], 1_000_000
        if r["round"]:
            r["privacy"] = {"epsilon": 0.25 * r["round"]}
    run = load_run(write_run(tmp_path / "fed", rows, fed_config()))
    names = {p.name for p in federated_plots(run)}
    assert {"bytes", "epsilon"} <= names
    row = summary_row(run)
    assert row["MB up"] == "3" and row["MB down"] == "4" and row["epsilon"] == "0.75"
    bare = fed_rows()
    for r in bare:
        del r["bytes_up"], r["bytes_down"]
    plain_run = load_run(write_run(tmp_path / "bare", bare, fed_config()))
    assert not {"bytes", "epsilon"} & {p.name for p in federated_plots(plain_run)}


def test_site_counts_per_round_by_hand(tmp_path):
    run = load_run(write_run(tmp_path / "fed", fed_rows(), fed_config()))
    counts = run.note_counts()
    assert counts["accepted"] == [(1, 3), (2, 2), (3, 3)]
    assert counts["rejected"] == [(1, 0), (2, 1), (3, 0)]
    assert counts["clipped"] == [(1, 0), (2, 1), (3, 0)]
    assert counts["dropped"] == [(1, 0), (2, 0), (3, 0)]
    assert run.sites() == ["site-0", "site-1", "site-2"]
    assert run.series("sites", "site-1", "train-loss") == ([1, 2, 3], [0.91, 0.81, 0.71])


def test_causal_lm_federated_run_plots_perplexity(tmp_path):
    run = write_run(tmp_path / "lm", fed_rows(task="causal_lm"), fed_config("causal_lm"))
    build_report([run])
    assert {"perplexity.png", "eval-loss.png"} <= pngs(run / "report")
    assert "accuracy.png" not in pngs(run / "report")


def test_task_inferred_without_config(tmp_path):
    run = load_run(write_run(tmp_path / "lm", fed_rows(task="causal_lm")))
    assert run.kind == "federated" and run.task == "causal_lm"
    assert run.planned_x() == 3  # no config: the last round recorded


def test_resumed_run_keeps_the_last_row_of_a_repeated_step(tmp_path):
    rows = pretrain_rows(steps=4, eval_every=2)
    again = dict(rows[4], loss=1.0)  # step 4 re-run after a restart from the step-2 checkpoint
    run = load_run(write_run(tmp_path / "pre", [*rows, {"event": "resumed"}, again]))
    assert [r["step"] for r in run.rows] == [1, 2, 3, 4]
    assert run.last("loss") == 1.0


def test_old_key_names_are_read(tmp_path):
    rows = [{"step": 1, "loss": 2.0, "step_time_s": 0.1, "val_loss": 1.0, "val_perplexity": 2.7}]
    run = load_run(write_run(tmp_path / "old", rows))
    assert run.last("val_ppl") == 2.7 and run.last("step_time") == 0.1


def test_html_escapes_what_runs_contain(tmp_path):
    rows = fed_rows()
    rows[1]["sites"]["<img src=x onerror=alert(1)>"] = {"accuracy": 0.1}
    run = write_run(tmp_path / "fed", rows, fed_config() + "# <script>alert(1)</script>\n")
    text = build_report([run]).html.read_text()
    assert "<script>alert" not in text and "&lt;script&gt;" in text
    assert "onerror" not in re.sub(r"&lt;.*?&gt;", "", text)


# ---- several runs -------------------------------------------------------------------------------


def test_several_runs_overlay_and_federated_vs_centralized(tmp_path, monkeypatch):
    pre = write_run(tmp_path / "central", pretrain_rows(), PRETRAIN_CONFIG)
    lm = write_run(tmp_path / "fed-lm", fed_rows(task="causal_lm"), fed_config("causal_lm"))
    a = write_run(tmp_path / "fedavg", fed_rows(), fed_config())
    b = write_run(tmp_path / "median", fed_rows(rounds=2), fed_config(rounds=2))
    monkeypatch.chdir(tmp_path)
    assert main([str(pre), str(lm), str(a), str(b)]) == 0
    (out,) = tmp_path.glob("report-*")
    names = pngs(out)
    assert {
        "compare-federated-vs-centralized.png",
        "compare-fed-accuracy.png",
        "compare-fed-macro-f1.png",
        "compare-fed-eval-loss.png",
        "compare-fed-train-loss.png",
        "compare-fed-bytes-up.png",
        "compare-fed-rejected.png",
    } <= names
    # Per-run plots are prefixed with the run's label; one pretraining run: no pretrain overlay.
    assert {"central-loss.png", "fed-lm-perplexity.png", "fedavg-accuracy.png"} <= names
    assert not any(n.startswith("compare-pretrain") for n in names)
    text = assert_self_contained(out / "report.html")
    for label in ("central", "fed-lm", "fedavg", "median"):
        assert f">{label}<" in text
    assert "2 / 2 rounds" in text and "6 / 6 steps" in text


def test_a_centralized_baseline_is_labelled_next_to_its_federation(tmp_path):
    fed = write_run(tmp_path / "fed", fed_rows(), fed_config())
    base = write_run(
        tmp_path / "base", [{**r, "centralized": True} for r in fed_rows()], fed_config()
    )
    assert load_run(fed).label == "fed"
    assert load_run(base).label == "base (centralized)"
    assert load_run(base, "centralized-1").label == "centralized-1"  # already says so
    rep = build_report([fed, base], tmp_path / "out")
    assert "compare-fed-macro-f1.png" in pngs(rep.html.parent)
    assert ">base (centralized)<" in rep.html.read_text()


def test_two_pretrain_runs_overlay(tmp_path):
    a = write_run(tmp_path / "a", pretrain_rows(), PRETRAIN_CONFIG)
    b = write_run(tmp_path / "b", pretrain_rows(steps=4), PRETRAIN_CONFIG)
    rep = build_report([a, b], tmp_path / "out")
    assert {"compare-pretrain-loss.png", "compare-pretrain-val-loss.png"} <= pngs(rep.html.parent)


def test_pretrain_with_classification_run_explains_the_missing_shared_plot(tmp_path):
    pre = write_run(tmp_path / "central", pretrain_rows(), PRETRAIN_CONFIG)
    fed = write_run(tmp_path / "fed", fed_rows(), fed_config())
    rep = build_report([pre, fed], tmp_path / "out")
    assert "compare-federated-vs-centralized.png" not in pngs(rep.html.parent)
    assert "No federated-vs-centralized plot" in rep.html.read_text()


def test_labels_are_directory_names_made_distinct():
    assert labels_for([Path("/x/a"), Path("/x/b")]) == ["a", "b"]
    assert labels_for([Path("/x/run"), Path("/y/run")]) == ["x/run", "y/run"]


def test_default_output_locations(tmp_path):
    assert default_out([tmp_path]) == tmp_path / "report"
    out = default_out([tmp_path, tmp_path / "b"])
    assert out.parent == Path.cwd() and re.fullmatch(r"report-\d{8}-\d{6}", out.name)


# ---- bad input ---------------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a-file.txt").write_text("x")
    (tmp_path / "no-metrics").mkdir()
    write_run(tmp_path / "empty", [])
    write_run(tmp_path / "garbled", ["\x00\x01garbage", "{not json", "[1, 2]"])
    write_run(tmp_path / "events-only", [{"event": "training started"}])
    return {
        "no such directory": tmp_path / "missing",
        "not a directory": tmp_path / "a-file.txt",
        "no metrics.jsonl": tmp_path / "no-metrics",
        "empty": tmp_path / "empty",
        "garbled": tmp_path / "garbled",
        "no step or round rows": tmp_path / "events-only",
    }


def test_bad_input_is_one_line_naming_the_path_and_exit_2(tmp_path, capsys):
    good = write_run(tmp_path / "good", pretrain_rows())
    for why, path in _bad_inputs(tmp_path).items():
        t0 = time.monotonic()
        assert main([str(good), str(path)]) == 2, why
        assert time.monotonic() - t0 < 5
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert str(path) in err and why in err, err
    assert not list(tmp_path.glob("report-*"))  # nothing written for a bad call
    assert not (good / "report").exists()


def test_cli_registers_report(tmp_path, capsys):
    from orchestrator.cli import main as cli_main

    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    run = write_run(tmp_path / "fed", fed_rows(), fed_config())
    assert cli_main(["report", str(run), "--out", str(tmp_path / "o")]) == 0
    assert str(tmp_path / "o" / "report.html") in capsys.readouterr().out


def test_garbled_lines_inside_a_good_file_are_skipped_with_a_warning(tmp_path, capsys):
    rows: list[Any] = pretrain_rows()
    rows.insert(3, "{oops")
    run = write_run(tmp_path / "pre", rows)
    assert main([str(run)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 line" in err and "line 4" in err
    # A half-written last line (a run still writing) is normal: no warning.
    run2 = write_run(tmp_path / "live", [*pretrain_rows(), '{"step": 7, "lo'])
    assert load_run(run2).warnings == []


def test_unwritable_output_is_one_line_and_exit_1(tmp_path, capsys):
    run = write_run(tmp_path / "pre", pretrain_rows())
    (tmp_path / "a-file").write_text("x")
    assert main([str(run), "--out", str(tmp_path / "a-file")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "a-file" in err


def test_load_errors_are_report_errors(tmp_path):
    with pytest.raises(ReportError, match=r"no metrics\.jsonl"):
        load_run(tmp_path)


def test_report_hint_is_a_runnable_command():
    assert report_hint("runs/pretrain-1") == (
        "Plots and an HTML report of this run: fedray report runs/pretrain-1"
    )
    assert report_hint(Path("/tmp/my runs/x")).endswith("fedray report '/tmp/my runs/x'")


# ---- a real (tiny) federated run -------------------------------------------------------------


def test_report_on_a_real_tiny_federated_run(cache_dir, tmp_path):
    from clients.client_app import app as client_app
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
    from orchestrator.federated.rounds import run_federated

    ensure_task_identity()
    job = load_config(
        FederatedJob,
        None,
        [
            f"data.cache_dir={cache_dir}",
            "data.tokenizer.path=null",  # a BPE of data.tokenizer.vocab_size, not the bundled one
            "federation.eval_every=1",  # every round evaluated (the demo preset: every 5th)
            "model.path=null",  # build the small model below (not the bundled one)
            "model.d_model=32",
            "model.n_head=2",
            "model.n_layer=1",
            "data.tokenizer.vocab_size=512",
            "task.max_length=16",
            "partition.max_examples_per_site=40",
            "finetune.local_steps=1",
            "train.micro_batch_size=8",
            "federation.num_sites=2",
            "federation.min_sites=2",
            "federation.num_rounds=2",
        ],
        default_preset="simulate-demo",
    )
    grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": 2} for i in range(2)])
    run_dir = tmp_path / "real-fed"
    run_federated(grid, job, run_dir)
    rep = build_report([run_dir])
    assert {"accuracy.png", "macro-f1.png", "train-loss.png", "bytes.png", "sites.png"} <= pngs(
        rep.html.parent
    )
    text = assert_self_contained(rep.html)
    assert "2 / 2 rounds" in text and "federated classification" in text
    run = load_run(run_dir)
    assert run.sites() == ["site-0", "site-1"]
    assert run.note_counts()["accepted"] == [(1, 2), (2, 2)]
