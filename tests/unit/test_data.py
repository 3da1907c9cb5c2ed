"""Data: sources, tokenizer training/loading, packing + cache, deterministic sharding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.config import ConfigError, DataConfig, TokenizerConfig
from orchestrator.data import prepare_text_data
from orchestrator.data.packing import pack_tokens, split_blocks
from orchestrator.data.sharding import (
    eval_indices_for_rank,
    global_batch_indices,
    micro_batches_for_rank,
)
from orchestrator.data.sources import iter_texts, resolve_files
from orchestrator.data.tokenizer import load_tokenizer, train_bpe

TEXT = "In the beginning was the word, and the word was with the text.\n" * 200


def test_pack_tokens_concatenates_with_eos_and_drops_tail():
    blocks = pack_tokens([[1, 2, 3], [4, 5]], block_size=3, eos_id=0)
    # stream: 1 2 3 0 4 5 0 -> two full blocks, tail [0] dropped
    assert blocks.tolist() == [[1, 2, 3], [0, 4, 5]]


def test_split_is_fixed_and_disjoint():
    blocks = np.arange(100 * 4).reshape(100, 4)
    tr, va = split_blocks(blocks, 0.1)
    tr2, va2 = split_blocks(blocks, 0.1)
    assert len(va) == 10 and len(tr) == 90
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert not set(tr[:, 0]) & set(va[:, 0])
    with pytest.raises(ValueError, match="too small"):
        split_blocks(blocks[:1], 0.1)


def test_global_batches_cover_each_epoch_exactly_once():
    n, g = 10, 4
    seen = np.concatenate(
        [global_batch_indices(s, g, n, seed=3) for s in range(5)]
    )  # 20 = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert not np.array_equal(seen[:10], seen[10:])  # epochs are reshuffled
    assert np.array_equal(global_batch_indices(2, g, n, 3), global_batch_indices(2, g, n, 3))


def test_rank_micro_batches_partition_the_global_batch():
    batch = np.arange(16)
    two = [micro_batches_for_rank(batch, r, 2, 4, 2) for r in range(2)]
    one = micro_batches_for_rank(batch, 0, 1, 4, 4)
    flat2 = sorted(np.concatenate([m for parts in two for m in parts]).tolist())
    assert flat2 == list(range(16))
    assert sorted(np.concatenate(one).tolist()) == list(range(16))
    with pytest.raises(ValueError):
        micro_batches_for_rank(batch, 0, 2, 4, 1)


def test_eval_indices_disjoint():
    a, b = eval_indices_for_rank(9, 0, 2, 100), eval_indices_for_rank(9, 1, 2, 100)
    assert not set(a) & set(b) and len(a) + len(b) == 9
    assert len(eval_indices_for_rank(9, 0, 2, 2)) == 2


def test_sources_txt_jsonl_csv_parquet(tmp_path: Path):
    (tmp_path / "a.txt").write_text("plain text doc")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": f"row {i}"}) for i in range(3)))
    (tmp_path / "c.csv").write_text("body,x\nfirst,1\nsecond,2\n")
    import pandas as pd

    pd.DataFrame({"body": ["pq1", "pq2"]}).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "ignored.bin").write_bytes(b"\0")
    files = resolve_files([str(tmp_path)])
    assert [f.name for f in files] == ["a.txt", "b.jsonl", "c.csv", "d.parquet"]
    # .txt files are whole documents; tables yield the text_field column
    texts = list(iter_texts(files[1:], "body"))
    assert texts == ["row 0", "row 1", "row 2", "first", "second", "pq1", "pq2"]


def test_sources_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_files([str(tmp_path / "nope.txt")])
    (tmp_path / "x.docx").write_text("?")
    with pytest.raises(ConfigError, match="unsupported suffix"):
        resolve_files([str(tmp_path / "x.docx")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no"):
        resolve_files([str(empty)])
    (tmp_path / "t.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(ConfigError, match=r"data\.text_field"):
        list(iter_texts([tmp_path / "t.jsonl"], "text"))
    (tmp_path / "broken.jsonl").write_text('{"text": "x"\n{{{\n')
    with pytest.raises(ConfigError, match="could not be read"):
        list(iter_texts([tmp_path / "broken.jsonl"], "text"))


def test_demo_corpus_is_bundled():
    files = resolve_files([])
    assert files[0].name == "kjv_pentateuch.txt" and files[0].stat().st_size > 500_000


def test_train_bpe_save_and_load_roundtrip(tmp_path: Path):
    tok = train_bpe([TEXT], vocab_size=300)
    assert len(tok) <= 300 and tok.eos_token == "<|endoftext|>"
    ids = tok("the word was with the text")["input_ids"]
    assert tok.decode(ids) == "the word was with the text"
    tok.save_pretrained(str(tmp_path / "tok"))
    again = load_tokenizer(tmp_path / "tok")
    assert again("the word")["input_ids"] == tok("the word")["input_ids"]


def test_load_gpt2_style_vocab_merges(tmp_path: Path):
    tok = train_bpe([TEXT], vocab_size=300)
    tok.backend_tokenizer.model.save(str(tmp_path))  # writes vocab.json + merges.txt
    loaded = load_tokenizer(tmp_path)
    assert loaded.eos_token is not None and loaded.pad_token is not None
    assert len(loaded("the word")["input_ids"]) >= 1


def test_load_tokenizer_refuses_hub_ids():
    with pytest.raises(ConfigError, match="not a local directory"):
        load_tokenizer("gpt2")


def test_prepare_caches_by_content(tmp_path: Path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    cfg = DataConfig(
        paths=[str(corpus)],
        block_size=16,
        cache_dir=str(tmp_path / "cache"),
        tokenizer=TokenizerConfig(vocab_size=300),
    )
    a = prepare_text_data(cfg)
    mtime = (a.packed.path / "manifest.json").stat().st_mtime_ns
    b = prepare_text_data(cfg)
    assert b.packed.path == a.packed.path  # reused, not rewritten
    assert (b.packed.path / "manifest.json").stat().st_mtime_ns == mtime
    every = np.arange(len(a.packed.train))
    assert np.array_equal(a.packed.train[every], b.packed.train[every])
    assert a.packed.train.shape[1] == 16 and len(a.packed.val) >= 1
    corpus.write_text(TEXT + "a new sentence entirely.\n")
    c = prepare_text_data(cfg)
    assert c.packed.path != a.packed.path  # content changed -> new cache entry
    cfg.block_size = 32
    assert prepare_text_data(cfg).packed.block_size == 32


@pytest.mark.parametrize(("n_val", "world", "micro", "max_batches"), [(3, 2, 1, 8), (5, 2, 2, 8),
                         (1, 2, 4, 8), (9, 4, 2, 1), (100, 3, 4, 5), (7, 2, 3, 8)])  # fmt: skip
def test_eval_batches_same_count_on_every_rank_and_exact_rows(n_val, world, micro, max_batches):
    """ZeRO-3 deadlocks if ranks run different numbers of forwards: every rank gets the same
    count, and the real rows are exactly the strided slices (padding is marked, never counted)."""
    from orchestrator.data.sharding import eval_batches_for_rank

    per_rank = [eval_batches_for_rank(n_val, r, world, micro, max_batches) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    assert all(len(b) <= max_batches for b in per_rank)
    for r, batches in enumerate(per_rank):
        real = np.concatenate([rows[:n] for rows, n in batches])
        limit = micro * max_batches
        assert np.array_equal(real, eval_indices_for_rank(n_val, r, world, limit))
        assert all(len(rows) >= 1 and len(rows) <= micro and 0 <= n <= len(rows)
                   for rows, n in batches)  # fmt: skip
    # the case that used to deadlock: 3 blocks, 2 ranks, micro 1 -> 2 and 1 forwards before
    assert [len(eval_indices_for_rank(3, r, 2, 8)) for r in range(2)] == [2, 1]


def test_epoch_permutation_is_cached_read_only_and_batches_unchanged():
    """The per-epoch order is computed once (not per step) and cannot be altered by a caller."""
    from orchestrator.data.sharding import epoch_permutation, global_batch_indices

    a = epoch_permutation(1000, 3, 7)
    assert a is epoch_permutation(1000, 3, 7)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 1
    assert sorted(a.tolist()) == list(range(1000))
    expected = np.random.default_rng([7, 3]).permutation(1000)[:16]
    # Step 187 spans epochs 2 and 3: its second half is the start of epoch 3's order.
    assert np.array_equal(global_batch_indices(3000 // 16, 16, 1000, 7)[8:], expected[:8])
