"""Fine-tuning and evaluating from a ``fedray compress`` (int8) export: LoRA on the frozen int8
base, its components on the wire, a site's base bit-for-bit the server's, a 1-round federation
(in-process LocalGrid) and the centralized baseline run from it to a finite loss and a float
export; full fine-tuning, an int4 base and pretraining from it are config errors (exit 2, no
run directory)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
)

from orchestrator.cli import main
from orchestrator.compress.pipeline import compress
from orchestrator.data.sources import demo_path

TOKENIZER = demo_path("tweets-bpe")


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory) -> Path:
    """A tiny GPT-2 LM export (the demo tokenizer) compressed by ``compress()`` to int8."""
    d = tmp_path_factory.mktemp("int8")
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    torch.manual_seed(0)
    eos = tok.eos_token_id
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=1, n_head=2,
        bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    GPT2LMHeadModel(cfg).save_pretrained(str(d / "export"))
    tok.save_pretrained(str(d / "export"))
    held_out = d / "held_out.txt"
    held_out.write_text("the flight was late again\nnew phone who dis\n")
    compress(d / "export", "int8", eval_data=held_out, max_rows=2)
    return d / "export-int8"


def overrides(cache_dir: Path, run: Path, export: Path) -> list[str]:
    """1 round, 2 sites of 11 demo tweets, 2 LoRA steps each, from ``export``."""
    return [
        f"data.cache_dir={cache_dir}", f"run.dir={run}", f"model.path={export}",
        "data.tokenizer.path=null", "task.max_length=16", "partition.max_examples_per_site=11",
        "train.micro_batch_size=4", "finetune.local_steps=2", "federation.num_rounds=1",
        "federation.num_sites=2", "federation.min_sites=2", "partition.kind=iid",
        "finetune.mode=lora",
    ]  # fmt: skip


def small_job(cache_dir: Path, run: Path, export: Path, *more: str):
    from orchestrator.config import load_config
    from orchestrator.config.federated import FederatedJob

    argv = [*overrides(cache_dir, run, export), *more]
    return load_config(FederatedJob, None, argv, default_preset="simulate-demo")


@pytest.mark.parametrize("kind", ["classification", "causal_lm"])
def test_a_site_rebuilds_the_servers_int8_base_bit_for_bit(int8_export, cache_dir, tmp_path, kind):
    from orchestrator.contract.model import build, load_state, model_state, trainable_names
    from orchestrator.federated.setup import prepare

    setup = prepare(small_job(cache_dir, tmp_path / "run", int8_export, f"task.kind={kind}"))
    assert len(setup.spec.quantized_modules) == 4  # c_attn, c_proj, c_fc, mlp.c_proj
    state = model_state(setup.model)
    qdata = {k: v for k, v in state.items() if k.endswith(":qdata")}
    assert len(qdata) == 4 and all(v.dtype == torch.int8 for v in qdata.values())
    wrapped = [k for k in qdata if ".base_layer.weight:" in k]
    assert len(wrapped) == 1 and ".c_attn." in wrapped[0]  # under its adapter (LoRA target)
    trainable = trainable_names(setup.model)
    assert trainable and all(
        "lora_" in k or k.startswith("base_model.model.score.") for k in trainable
    )

    site = build(setup.spec)  # what a site builds from the message's spec, then loads
    load_state(site, {k: v.numpy() for k, v in state.items()})
    ids = torch.randint(0, 2000, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = setup.model.eval()(input_ids=ids).logits
        assert torch.equal(site.eval()(input_ids=ids).logits, expected)

    # The run's export: the same model in float32 (dequantized base, adapters merged).
    from orchestrator.contract.model import export

    with torch.no_grad():  # a trained adapter: lora_B is zero at init
        for name, p in setup.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(4))
    out = export(setup.model, setup.tokenizer, tmp_path / "export", setup.spec)
    auto = AutoModelForSequenceClassification if kind == "classification" else AutoModelForCausalLM
    plain = auto.from_pretrained(str(out)).eval()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    with torch.inference_mode():
        expected = setup.model(input_ids=ids).logits
        assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-5)


def test_one_federated_round_from_an_int8_export(int8_export, cache_dir, tmp_path):
    """The pretraining export's int8 copy as the base of a federated causal-LM fine-tune."""
    from clients.client_app import app as client_app
    from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
    from orchestrator.federated.rounds import run_federated

    ensure_task_identity()
    run = tmp_path / "fed"
    job = small_job(cache_dir, run, int8_export, "task.kind=causal_lm")
    grid = LocalGrid(client_app, [{"partition-id": i, "num-partitions": 2} for i in range(2)])
    result = run_federated(grid, job, run)
    last = result.rounds[-1]
    assert last["round"] == 1 and last["train"]["sites-accepted"] == 2
    assert math.isfinite(last["train"]["train-loss"]) and math.isfinite(last["eval"]["eval-loss"])
    model = AutoModelForCausalLM.from_pretrained(str(run / "export"))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # no int8 left


def test_centralized_baseline_from_an_int8_export(int8_export, cache_dir, tmp_path, capsys):
    """`fedray simulate --centralized model.path=<int8 export>`: a classifier on the int8 base."""
    run = tmp_path / "central"
    argv = ["simulate", "--centralized", *overrides(cache_dir, run, int8_export)]
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    assert math.isfinite(rows[-1]["train"]["train-loss"])
    assert math.isfinite(rows[-1]["eval"]["macro-f1"])
    assert (run / "export" / "model.safetensors").is_file()


def fake_quantized(d: Path, quant_type: str) -> Path:
    """An export directory whose config.json names a torchao quantization (enough for the
    checks made before anything loads)."""
    d.mkdir(parents=True)
    cfg = {
        "model_type": "gpt_bigcode",
        "architectures": ["GPTBigCodeForCausalLM"],
        "quantization_config": {
            "quant_method": "torchao",
            "quant_type": {"default": {"_type": quant_type, "_data": {}, "_version": 2}},
        },
    }
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize(
    ("quant_type", "extra", "key", "wording"),
    [
        ("Int8WeightOnlyConfig", ["finetune.mode=full"], "finetune.mode", "finetune.mode=lora"),
        ("Int4WeightOnlyConfig", ["finetune.mode=lora"], "model.path", "int8 exports only"),
    ],
)
@pytest.mark.parametrize("centralized", [False, True])
def test_bad_quantized_bases_are_config_errors(
    tmp_path, capsys, quant_type, extra, key, wording, centralized
):
    export = fake_quantized(tmp_path / "export-q", quant_type)
    run = tmp_path / "run"
    argv = ["simulate", f"model.path={export}", f"run.dir={run}", *extra]
    assert main([*argv, *(["--centralized"] if centralized else [])]) == 2
    err = capsys.readouterr().err
    assert "config error:" in err and key in err and wording in err
    assert not run.exists()


def test_pretraining_from_an_int8_export_is_a_config_error(int8_export, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", f"model.path={int8_export}", f"run.dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "model.path" in err and "float export" in err and "finetune.mode=lora" in err
    assert not run.exists()
