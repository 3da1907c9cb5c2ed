"""Masked-LM pretraining without Ray: the masking rule (rates, seeding, identical across ranks),
the WordPiece tokenizer, BERT built from config and its export, and every config error."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from orchestrator.cli import main
from orchestrator.config import ConfigError, ModelConfig, PretrainJob, load_config
from orchestrator.data.sharding import global_batch_indices, micro_batches_for_rank
from orchestrator.data.sources import demo_path, iter_texts
from orchestrator.data.tokenizer import check_mask_token, train_bpe, train_wordpiece
from orchestrator.export import export_hf
from orchestrator.models import build_model, hf_config, is_encoder
from orchestrator.pretrain.objective import VAL_SPLIT, Objective, prediction_mask


@pytest.fixture(scope="module")
def wordpiece():
    texts = list(itertools.islice(iter_texts([demo_path("kjv_pentateuch.txt")]), 1500))
    return train_wordpiece(texts, 600)


def corpus_blocks(tok, n: int = 64, block: int = 64) -> np.ndarray:
    """``n`` blocks of real token ids (documents separated by [SEP], as the token cache is)."""
    ids: list[int] = []
    for text in iter_texts([demo_path("kjv_pentateuch.txt")]):
        ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
        if len(ids) >= n * block:
            break
    return np.asarray(ids[: n * block], dtype=np.uint16).reshape(n, block)


def test_wordpiece_has_bert_specials_and_wraps_inputs(wordpiece):
    tok = wordpiece
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 2, 3, 4)
    assert tok.eos_token == "[SEP]"  # documents are separated by [SEP] in the token stream
    ids = tok("In the beginning", max_length=10, padding="max_length")["input_ids"]
    assert ids[0] == tok.cls_token_id and tok.sep_token_id in ids and ids[-1] == tok.pad_token_id
    check_mask_token(tok, "wordpiece")  # no error


def test_masking_rates_follow_the_80_10_10_rule(wordpiece):
    tok = wordpiece
    x = corpus_blocks(tok, n=96)
    obj = Objective("masked", tok, mlm_probability=0.15, seed=3)
    inputs, labels = obj(x, np.arange(len(x)), step=0)
    orig = torch.from_numpy(x.astype(np.int64))
    orig[:, 0] = tok.cls_token_id
    special = torch.from_numpy(np.isin(orig.numpy(), tok.all_special_ids))
    picked = labels != -100
    assert (inputs[:, 0] == tok.cls_token_id).all()  # every block starts with [CLS]
    assert not (picked & special).any()  # special tokens are never picked
    assert torch.equal(labels[picked], orig[picked])  # the label is the original token
    assert torch.equal(inputs[~picked], orig[~picked])  # the rest is untouched
    rate = picked.sum().item() / (~special).sum().item()
    assert 0.13 < rate < 0.17, rate
    to_mask = (inputs[picked] == tok.mask_token_id).float().mean().item()
    kept = (inputs[picked] == orig[picked]).float().mean().item()
    assert 0.76 < to_mask < 0.84, to_mask
    assert 0.07 < kept < 0.14, kept  # 10% kept, plus random draws that hit the same token
    assert 0.06 < 1 - to_mask - kept < 0.13  # random replacements


def test_masking_is_seeded_per_block_and_step(wordpiece):
    x = corpus_blocks(wordpiece, n=8)
    obj = Objective("masked", wordpiece, 0.15, seed=1)
    blocks = np.arange(8)
    a = obj(x, blocks, step=5)
    assert all(torch.equal(u, v) for u, v in zip(a, obj(x, blocks, step=5), strict=True))
    assert not torch.equal(a[1], obj(x, blocks, step=6)[1])  # a new mask every step
    assert not torch.equal(a[1], Objective("masked", wordpiece, 0.15, seed=2)(x, blocks, 5)[1])
    val = obj(x, blocks, step=0, split=VAL_SPLIT)
    assert not torch.equal(val[1], obj(x, blocks, step=0)[1])  # its own stream


def test_masks_are_identical_across_ranks_and_accumulation(wordpiece):
    """Each rank masks its own micro-batches; the result is what 1 worker with 2 accumulation
    steps masks, block for block (the DDP shards are deterministic and resume-exact)."""
    x = corpus_blocks(wordpiece, n=40)
    obj = Objective("masked", wordpiece, 0.15, seed=7)
    step = 3
    batch = global_batch_indices(step, 8, len(x), seed=7)

    def masked(world: int, accum: int) -> dict[int, tuple[list[int], list[int]]]:
        out = {}
        for rank in range(world):
            for idx in micro_batches_for_rank(batch, rank, world, 8 // (world * accum), accum):
                inputs, labels = obj(x[idx], idx, step)
                out.update(
                    {int(b): (inputs[i].tolist(), labels[i].tolist()) for i, b in enumerate(idx)}
                )
        return out

    two_ranks, one_rank = masked(2, 1), masked(1, 2)
    assert two_ranks == one_rank and len(two_ranks) == 8


def test_causal_objective_is_the_block_itself():
    x = np.arange(12, dtype=np.uint16).reshape(2, 6)
    inputs, labels = Objective("causal")(x, np.arange(2), 0)
    assert torch.equal(inputs, labels) and inputs.dtype == torch.int64
    labels[1] = -100  # a padding row
    m = prediction_mask(labels, "causal")
    assert m[0].all() and not m[1].any()
    masked = torch.tensor([[-100, 5, -100]])
    assert prediction_mask(masked, "masked").tolist() == [[False, True, False]]


def test_bert_built_from_config_exports_as_masked_lm_and_classifier(tmp_path: Path):
    cfg = hf_config(ModelConfig(family="bert", n_layer=1, n_head=2, d_model=32), 200, 24, 3, 0)
    assert is_encoder(cfg) and cfg.max_position_embeddings == 24
    model = build_model(cfg, objective="masked")
    x = torch.randint(5, 200, (2, 24))
    labels = torch.full_like(x, -100)
    labels[:, 3] = x[:, 3]
    assert torch.isfinite(model(input_ids=x, labels=labels).loss)
    out = export_hf(model.state_dict(), cfg, None, tmp_path / "export", objective="masked")
    mlm = AutoModelForMaskedLM.from_pretrained(out, local_files_only=True)
    assert torch.allclose(mlm(input_ids=x).logits, model.eval()(input_ids=x).logits, atol=1e-5)
    clf = AutoModelForSequenceClassification.from_pretrained(out, num_labels=3)
    assert clf(input_ids=x).logits.shape == (2, 3)
    assert torch.equal(
        clf.bert.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight
    )


def load(*overrides: str) -> PretrainJob:
    return load_config(PretrainJob, "pretrain-bert-tiny", list(overrides))


def test_bert_preset_is_masked_ddp_on_two_workers():
    job = load()
    assert (job.model.family, job.train.objective, job.backend) == ("bert", "masked", "ddp")
    assert job.scaling.num_workers == 2 and not job.distill.enabled


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        (["train.objective=causal"], "train.objective", "'masked' with model.family=bert"),
        (["model.family=gpt2"], "train.objective", "'causal' with model.family=gpt2"),
        (["train.mlm_probability=0"], "train.mlm_probability", "(0, 1)"),
        (["train.objective=mlm"], "train.objective", "'causal' or 'masked'"),
        (["model.family=t5"], "model.family", "'gpt2', 'llama' or 'bert'"),
        (["distill.alpha=1.5"], "distill.alpha", "[0, 1]"),
        (["distill.temperature=0"], "distill.temperature", "> 0"),
    ],
)
def test_bad_objective_settings_name_the_key(overrides: list[str], key: str, fragment: str):
    with pytest.raises(ConfigError) as ei:
        load(*overrides)
    assert ei.value.key == key and fragment in str(ei.value)


def test_tokenizer_without_mask_token_is_a_config_error(tmp_path: Path):
    bpe = train_bpe(["some text to learn from", "more text"] * 20, 300)
    bpe.save_pretrained(str(tmp_path / "bpe"))
    from orchestrator.data import prepare_text_data

    job = load(f"data.tokenizer.path={tmp_path / 'bpe'}", f"data.cache_dir={tmp_path / 'c'}")
    with pytest.raises(ConfigError) as ei:
        prepare_text_data(job.data, objective="masked")
    assert ei.value.key == "data.tokenizer.path" and "no mask token" in str(ei.value)


def test_cli_objective_mismatch_exits_2_and_leaves_no_run_dir(tmp_path: Path, capsys):
    rc = main(["pretrain", "pretrain-tiny", "train.objective=masked", f"run.root={tmp_path}"])
    assert rc == 2
    assert "train.objective" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_model_path_of_the_other_kind_is_a_config_error(tmp_path: Path):
    from orchestrator.pretrain.runner import check_model_objective

    cfg = hf_config(ModelConfig(family="bert", n_layer=1, n_head=2, d_model=32), 100, 16, 3, 0)
    job = load("model.path=/some/bert", "train.objective=causal")  # path: family unchecked
    with pytest.raises(ConfigError) as ei:
        check_model_objective(job, cfg)
    assert ei.value.key == "train.objective" and "train.objective=masked" in str(ei.value)
