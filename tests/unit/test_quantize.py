"""``fedray compress``: GPT-2's exact nn.Linear rewrite, module and byte counts worked out by
hand, the bundled pretrained GPT-2 quantized within tolerance and loaded by plain transformers
(fedray not importable), a federated classifier export, and every bad input (exit 2, nothing
written)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from orchestrator.cli import main
from orchestrator.compress.gpt2 import check_same_logits, qkv_permutation, to_linear_model
from orchestrator.compress.pipeline import RESULT_FILE, compress
from orchestrator.compress.quantize import layer_bytes
from orchestrator.data.sources import DEMO_LABELLED, demo_path

DEMO_GPT2 = demo_path("tweets-gpt2")
HELD_OUT = demo_path(DEMO_LABELLED)  # tweets the demo model never saw (orchestrator/data/demo)


def tiny_gpt2(cls=GPT2LMHeadModel, **kw):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4, **kw)
    return cls(cfg).eval()


def test_qkv_permutation_by_hand():
    # n_embd 4, 2 heads of 2: GPT-2 rows q0 q1 q2 q3 | k0..k3 | v0..v3 (0-3, 4-7, 8-11);
    # GPTBigCode wants head 0's q, k, v then head 1's.
    assert qkv_permutation(4, 2).tolist() == [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11]


@pytest.mark.parametrize(
    ("cls", "kw"),
    [(GPT2LMHeadModel, {}), (GPT2ForSequenceClassification, {"num_labels": 3, "pad_token_id": 0})],
)
def test_gpt2_rewrite_to_linear_is_exact(cls, kw):
    from transformers.pytorch_utils import Conv1D

    gpt2 = tiny_gpt2(cls, **kw)
    linear = to_linear_model(gpt2)
    assert linear.config.model_type == "gpt_bigcode" and not linear.config.multi_query
    assert not any(isinstance(m, Conv1D) for m in linear.modules())
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in linear.modules())
    assert n_linear == 4 * 2 + 1  # c_attn, c_proj, c_fc, mlp.c_proj per layer + the head
    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(1))
    assert check_same_logits(gpt2, linear, ids) < 1e-5  # a padded row included


def test_quantized_layer_bytes_by_hand():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Linear(8, 2, bias=False))
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == "0")
    got = layer_bytes(model)
    assert (got.modules, got.linear_total) == (1, 2)
    # int8 codes 8 x 64 + one fp32 scale per output row (8 x 4) + the fp32 bias (8 x 4)
    assert got.quantized_bytes == 8 * 64 + 8 * 4 + 8 * 4 == 576
    assert got.fp32_bytes == 8 * 64 * 4 + 8 * 4 == 2080
    assert got.ratio == pytest.approx(576 / 2080)


LOAD_WITHOUT_FEDRAY = """
import json, sys
for name in ("orchestrator", "clients", "strategies"):
    sys.modules[name] = None  # importing fedray now fails: the load must not need it
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
weight = model.transformer.h[0].attn.c_attn.weight
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.inference_mode():
    logits = model(input_ids=ids).logits[0, -1, :8]
print(json.dumps({"weight": type(weight).__name__, "logits": logits.tolist()}))
"""


@pytest.fixture(scope="module")
def demo_int8(tmp_path_factory):
    """The bundled pretrained GPT-2 compressed to int8 (measured on 64 held-out tweets)."""
    d = tmp_path_factory.mktemp("demo")
    shutil.copytree(DEMO_GPT2, d / "export")
    result = compress(d / "export", "int8", eval_data=HELD_OUT, max_rows=64)
    return d, result


def test_demo_gpt2_int8_counts_size_and_quality(demo_int8):
    d, r = demo_int8
    out = d / "export-int8"  # default: beside the export
    assert r.out == str(out) and (out / "model.safetensors").is_file()
    assert (r.model_type_before, r.model_type_after) == ("gpt2", "gpt_bigcode")
    assert (r.quantized_modules, r.linear_modules) == (8, 9)  # 2 layers x 4; lm_head kept
    assert r.layer_ratio <= 0.27  # int8 codes + fp32 scales + fp32 biases vs fp32
    assert r.dir_bytes_after < 0.65 * r.dir_bytes_before  # embeddings stay fp32
    assert r.eval_rows == 64
    assert r.after["perplexity"] <= 1.01 * r.before["perplexity"]
    assert r.before["tokens_per_s"] > 0 and r.after["tokens_per_s"] > 0
    assert json.loads((out / RESULT_FILE).read_text())["after"] == r.after
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    assert not list(d.glob(".tmp-*")) and not list(d.glob(".linear-*"))


def test_int8_export_loads_in_plain_transformers_without_fedray(demo_int8, tmp_path):
    from transformers import AutoModelForCausalLM

    d, _ = demo_int8
    ids = [[5, 17, 300, 41, 2, 99]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_FEDRAY, str(d / "export-int8"), json.dumps(ids)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["weight"] == "Int8Tensor"
    here = AutoModelForCausalLM.from_pretrained(str(d / "export-int8"))
    with torch.inference_mode():
        expected = here(input_ids=torch.tensor(ids)).logits[0, -1, :8]
    assert got["logits"] == pytest.approx(expected.tolist(), abs=1e-5)


def test_report_of_a_compressed_export_outside_a_run_says_so(demo_int8, capsys):
    d, _ = demo_int8  # d/export has no metrics.jsonl: not a run's export
    assert main(["report", str(d / "export-int8")]) == 2
    err = capsys.readouterr().err
    assert "config error:" in err and "not a run's export" in err and "compression.json" in err


def test_llama_export_is_quantized_as_it_is(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "export"))
    AutoTokenizer.from_pretrained(str(DEMO_GPT2)).save_pretrained(str(tmp_path / "export"))
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("in the beginning\nthe flight was late again\n")
    r = compress(tmp_path / "export", "int8", tmp_path / "q", eval_data=held_out)
    assert (r.model_type_before, r.model_type_after) == ("llama", "llama")
    assert (r.quantized_modules, r.linear_modules) == (2 * 7, 2 * 7 + 1)  # q k v o gate up down
    assert r.eval_rows == 2 and r.layer_ratio <= 0.27


def fake_export(d: Path, model_type: str = "gpt2", **extra) -> Path:
    """A directory that looks like an export (enough for the checks made before loading)."""
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": model_type, "architectures": ["GPT2LMHeadModel"], **extra}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes(b"")
    (d / "tokenizer.json").write_text("{}")
    return d


def no_weights(d: Path) -> Path:
    (d / "model.safetensors").unlink()
    return d


def bad_json(d: Path) -> Path:
    (d / "config.json").write_text('{"model_type": "gpt2", ')  # cut short
    return d


def no_tokenizer(d: Path) -> Path:
    """A real GPT-2 export whose tokenizer files are missing."""
    shutil.copytree(DEMO_GPT2, d, ignore=shutil.ignore_patterns("tokenizer*"))
    return d


def nothing_written(parent: Path, out: Path) -> bool:
    return (
        not out.exists() and not list(parent.glob(".tmp-*")) and not list(parent.glob(".linear-*"))
    )


@pytest.mark.parametrize(
    ("make", "wording"),
    [
        (lambda d: d / "missing", "not a Hugging Face model directory"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no config.json"),
        (lambda d: fake_export(d / "bert", "bert"), "model type 'bert'"),
        (
            lambda d: fake_export(d / "enc", architectures=["GPT2DoubleHeadsModel"]),
            "neither a causal LM nor a sequence classifier",
        ),
        (
            lambda d: fake_export(d / "q", quantization_config={"quant_method": "torchao"}),
            "already quantized",
        ),
        (lambda d: no_weights(fake_export(d / "w")), "no weights"),
        (lambda d: bad_json(fake_export(d / "j")), "not readable JSON"),
        (lambda d: no_tokenizer(d / "t"), "has no tokenizer"),
    ],
)
def test_bad_exports_are_config_errors_and_write_nothing(make, wording, tmp_path, capsys):
    export = make(tmp_path)
    out = tmp_path / "out"
    assert main(["compress", str(export), "--method", "int8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "config error:" in err and wording in err
    assert nothing_written(tmp_path, out)


def test_bad_flags_and_outputs(tmp_path, capsys):
    export = fake_export(tmp_path / "export")
    with pytest.raises(SystemExit) as e:  # argparse: unknown method
        main(["compress", str(export), "--method", "int3"])
    assert e.value.code == 2
    assert main(["compress", str(export), "--method", "int8", "--out", str(export / "q")]) == 2
    assert "inside it" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["compress", str(export), "--method", "int8", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["compress", str(export), "--method", "int8", "--max-rows", "0"]) == 2


def test_missing_torchao_says_how_to_install(tmp_path, capsys, monkeypatch):
    import orchestrator.commands.compress as command

    export = fake_export(tmp_path / "export")
    real = command.importlib.util.find_spec
    monkeypatch.setattr(
        command.importlib.util, "find_spec", lambda n, *a: None if n == "torchao" else real(n, *a)
    )
    assert main(["compress", str(export), "--method", "int8"]) == 2
    assert "pip install 'fedray[compress]'" in capsys.readouterr().err


@pytest.mark.parametrize("gpu", [None, (7, 5)])  # no GPU; a GPU older than compute 8.0
def test_int4_without_a_capable_gpu_is_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch, gpu
):
    shutil.copytree(DEMO_GPT2, tmp_path / "export")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu is not None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: gpu)
    out = tmp_path / "q4"
    argv = ["compress", str(tmp_path / "export"), "--method", "int4", "--out", str(out)]
    assert main([*argv, "--eval-data", str(HELD_OUT)]) == 2
    err = capsys.readouterr().err
    assert "int4" in err and "CUDA GPU" in err and "--method int8" in err
    assert nothing_written(tmp_path, out)


def test_no_held_out_data_is_a_config_error(tmp_path, capsys):
    shutil.copytree(DEMO_GPT2, tmp_path / "export")  # no run config beside it
    out = tmp_path / "q"
    assert main(["compress", str(tmp_path / "export"), "--method", "int8", "--out", str(out)]) == 2
    assert "--eval-data FILE" in capsys.readouterr().err
    assert nothing_written(tmp_path, out)


def test_a_failure_while_running_leaves_the_previous_output(tmp_path, capsys, monkeypatch):
    import orchestrator.compress.quantize as quantize

    shutil.copytree(DEMO_GPT2, tmp_path / "export")
    out = tmp_path / "q"
    out.mkdir()
    (out / "config.json").write_text("{}")  # an earlier compressed export

    def broken(*a, **kw):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(quantize, "load_quantized", broken)
    argv = ["compress", str(tmp_path / "export"), "--method", "int8", "--out", str(out)]
    assert main([*argv, "--eval-data", str(HELD_OUT), "--max-rows", "4"]) == 1
    assert "disk on fire" in capsys.readouterr().err
    assert (out / "config.json").read_text() == "{}"
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".linear-*"))


def test_federated_classifier_export_and_report(cache_dir, tmp_path):
    """A federated run's export (in-process LocalGrid, 4 sites, 1 round), compressed with no
    --eval-data: measured on every site's held-out rows, shown by `fedray report RUN_DIR`, and
    fine-tuned again from the int8 copy."""
    from clients.client_app import app as client_app
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob
    from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
    from orchestrator.federated.rounds import run_federated
    from orchestrator.report import build_report

    ensure_task_identity()
    run = tmp_path / "fed"
    small = [
        f"data.cache_dir={cache_dir}", f"run.dir={run}", "model.path=null",
        "data.tokenizer.path=null", "model.d_model=32", "model.n_head=2", "model.n_layer=1",
        "data.tokenizer.vocab_size=512", "task.max_length=16",
        "partition.max_examples_per_site=21", "train.micro_batch_size=4",
        "finetune.local_steps=null", "federation.num_rounds=1",
    ]  # fmt: skip
    job = load_config(FederatedJob, None, small, default_preset="simulate-demo")
    grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": 4} for i in range(4)])
    run_federated(grid, job, run)
    r = compress(run / "export", "int8")
    assert r.task == "classification" and (r.quantized_modules, r.linear_modules) == (4, 5)
    assert "held-out rows of the run" in r.eval_source and r.eval_rows == 16  # 4 per site
    assert {"accuracy", "macro-f1"} <= set(r.before) and {"accuracy", "macro-f1"} <= set(r.after)
    assert abs(r.after["accuracy"] - r.before["accuracy"]) <= 1 / 16  # one row at most
    html = build_report([run]).html.read_text()
    assert "Compressed exports" in html and "export-int8" in html and "macro-f1" in html
    # `fedray report` named the compressed export (written elsewhere with --out): its run.
    elsewhere = tmp_path / "elsewhere" / "fed-int8"
    shutil.copytree(run / "export-int8", elsewhere)
    assert main(["report", str(elsewhere), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert str(elsewhere) in html and "export-int8" in html and "Compressed exports" in html

    # The compressed classifier as the start of another federation (LoRA on its int8 base):
    # round 0 evaluates it on the same sites' held-out rows that compress measured it on.
    again = tmp_path / "again"
    more = [f"run.dir={again}", f"model.path={run / 'export-int8'}", "finetune.mode=lora"]
    kept = [o for o in small if not o.startswith(("run.", "model.", "data.tokenizer.vocab"))]
    job2 = load_config(FederatedJob, None, [*kept, *more], default_preset="simulate-demo")
    rounds = run_federated(grid, job2, again).rounds
    assert rounds[0]["eval"]["accuracy"] == pytest.approx(r.after["accuracy"])
    assert rounds[0]["eval"]["num-examples"] == r.eval_rows
    assert rounds[1]["train"]["sites-accepted"] == 4


def test_pretraining_export_is_measured_on_the_runs_validation_blocks(cache_dir, tmp_path):
    """A pretraining run's export, compressed with no --eval-data: the run's own validation
    blocks (the fixed split its training held out) from RUN_DIR/config.yaml."""
    from orchestrator.config.loader import load_config, to_yaml
    from orchestrator.config.schema import PretrainJob
    from orchestrator.data import prepare_text_data

    run = tmp_path / "run"
    run.mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(HELD_OUT.read_text()[:20000])
    job = load_config(
        PretrainJob,
        None,
        [f"data.paths=[{corpus}]", f"data.tokenizer.path={DEMO_GPT2}", "data.block_size=16",
         f"data.cache_dir={cache_dir}", "data.val_fraction=0.1", "data.num_proc=1"],
        default_preset="pretrain-tiny",
    )  # fmt: skip
    (run / "config.yaml").write_text(to_yaml(job))
    shutil.copytree(DEMO_GPT2, run / "export")
    val = prepare_text_data(job.data).packed.val
    r = compress(run / "export", "int8", max_rows=10_000)
    assert str(run / "config.yaml") in r.eval_source
    assert r.eval_rows == len(val) > 0
    assert r.after["perplexity"] <= 1.01 * r.before["perplexity"]


def test_training_from_a_quantized_export_is_a_config_error(tmp_path):
    from orchestrator.config.loader import ConfigError
    from orchestrator.models import check_model_dir

    q = fake_export(tmp_path / "export-int8", quantization_config={"quant_method": "torchao"})
    with pytest.raises(ConfigError, match=r"quantized export .* float export"):
        check_model_dir(str(q))
    assert check_model_dir(str(DEMO_GPT2)) == DEMO_GPT2
