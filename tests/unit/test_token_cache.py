"""The sharded token cache: same blocks as packing everything in memory, atomic, validated."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from orchestrator.config import ConfigError, DataConfig, TokenizerConfig
from orchestrator.data import prepare_text_data
from orchestrator.data.packing import (
    encode_shard,
    pack_tokens,
    packed_dataset,
    split_blocks,
    token_dtype,
)
from orchestrator.data.sources import (
    demo_path,
    iter_pieces,
    iter_texts,
    split_pieces,
)
from orchestrator.data.tokenizer import train_bpe


def reference_blocks(files, tok, block_size, val_fraction):
    """The previous implementation: every token in one list, packed and split in memory."""

    def docs():
        for text in iter_texts(files):
            ids: list[int] = []
            for enc in tok(split_pieces(text), add_special_tokens=False)["input_ids"]:
                ids.extend(enc)
            yield ids

    return split_blocks(pack_tokens(docs(), block_size, tok.eos_token_id), val_fraction)


@pytest.fixture(scope="module")
def demo_tok():
    text = demo_path("kjv_pentateuch.txt").read_text()[:200_000]
    return train_bpe([text], 400)


def test_demo_corpus_blocks_equal_the_in_memory_packing(tmp_path, demo_tok):
    files = [demo_path("kjv_pentateuch.txt")]
    ref_train, ref_val = reference_blocks(files, demo_tok, 64, 0.05)
    # small shards so blocks straddle shard boundaries
    from orchestrator.data import packing

    tokens = packing.token_cache(files, "text", demo_tok, "k", tmp_path, 1, batch_chars=50_000)
    assert len(json.loads((tokens / "manifest.json").read_text())["shards"]) > 5
    packed = packed_dataset(files, "text", demo_tok, 64, 0.05, "k", tmp_path)
    assert packed.train.shape == ref_train.shape and packed.val.shape == ref_val.shape
    assert np.array_equal(packed.train[np.arange(len(packed.train))], ref_train)
    assert np.array_equal(packed.val[np.arange(len(packed.val))], ref_val)
    # unordered, repeated indices as the sampler asks for them
    idx = np.array([5, 0, 5, len(ref_train) - 1])
    assert np.array_equal(packed.train[idx], ref_train[idx])
    # a worker gets paths, not arrays, and reopens the maps
    clone = pickle.loads(pickle.dumps(packed.train))
    assert len(pickle.dumps(packed.train)) < 2000
    assert np.array_equal(clone[idx], ref_train[idx])


@pytest.mark.integration  # starts 2 tokenizer processes (~5 s)
def test_two_processes_write_the_same_cache(tmp_path, demo_tok):
    files = [demo_path("kjv_pentateuch.txt")]
    from orchestrator.data import packing

    one = packing.token_cache(files, "text", demo_tok, "a", tmp_path, 1, batch_chars=400_000)
    two = packing.token_cache(files, "text", demo_tok, "b", tmp_path, 2, batch_chars=400_000)
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert m1["shards"] == m2["shards"]
    for s in m1["shards"]:
        assert (one / s["file"]).read_bytes() == (two / s["file"]).read_bytes()


def test_pieces_stream_text_files_like_split_pieces(tmp_path):
    text = "".join(f"line {i} " + "x" * (i % 13) + "\n" for i in range(3000)) + "no newline tail"
    f = tmp_path / "a.txt"
    f.write_text(text)
    (tmp_path / "empty.txt").write_text("")
    streamed = list(iter_pieces([f, tmp_path / "empty.txt"], size=1000, read_chars=333))
    pieces = split_pieces(text, 1000)
    assert [p for p, _ in streamed] == [*pieces, ""]
    assert [e for _, e in streamed] == [False] * (len(pieces) - 1) + [True, True]


def test_dtype_follows_the_vocabulary():
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(128256) == np.uint32


def test_encode_shard_puts_eos_after_each_document(tmp_path, demo_tok):
    out = tmp_path / "s.bin"
    n = encode_shard([("In the", False), (" beginning", True), ("God", True)], 0, "uint16",
                     str(out), tokenizer=demo_tok)  # fmt: skip
    ids = np.fromfile(out, dtype=np.uint16)
    assert len(ids) == n and ids[-1] == 0
    assert (ids == 0).sum() == 2


def test_damaged_or_half_written_cache_is_rebuilt(tmp_path, demo_tok):
    files = [tmp_path / "c.txt"]
    files[0].write_text(demo_path("kjv_pentateuch.txt").read_text()[:30_000])
    a = packed_dataset(files, "text", demo_tok, 64, 0.05, "k", tmp_path)
    first = a.train[np.arange(4)]
    shard = a.path / "shard-000000.bin"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    (tmp_path / "tokens" / ".tmp-k-dead").mkdir()  # a builder that died: never read
    b = packed_dataset(files, "text", demo_tok, 64, 0.05, "k", tmp_path)
    assert np.array_equal(b.train[np.arange(4)], first)


def test_corpus_too_small_for_one_block_is_a_config_error(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("a few words")
    cfg = DataConfig(paths=[str(f)], block_size=64, cache_dir=str(tmp_path / "c"),
                     tokenizer=TokenizerConfig(vocab_size=300))  # fmt: skip
    with pytest.raises(ConfigError, match=r"tokens, 0 block\(s\) of data.block_size=64") as e:
        prepare_text_data(cfg)
    assert e.value.key == "data.block_size"


def test_unreadable_file_is_a_config_error(tmp_path, monkeypatch):
    import builtins

    f = tmp_path / "locked.txt"
    f.write_text("secret")
    real_open = builtins.open

    def no_access(file, *args, **kwargs):  # chmod 0 does not stop root: refuse like the OS would
        if str(file) == str(f):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_access)
    cfg = DataConfig(paths=[str(f)], cache_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match=r"locked\.txt.*cannot be read: Permission denied") as e:
        prepare_text_data(cfg)
    assert e.value.key == "data.paths"


@pytest.mark.integration  # a measurement: tokenizes ~0.7 MB under tracemalloc (~10 s)
def test_driver_memory_stays_flat_as_the_corpus_grows(tmp_path, demo_tok):
    """Python-heap peak (tracemalloc; numpy arrays included) while building the cache: the same
    for a corpus 4x larger, and far below what holding the token stream would take."""
    import tracemalloc

    from orchestrator.data import packing

    lines = demo_path("kjv_pentateuch.txt").read_text().splitlines(keepends=True)[:1200]
    unit = "".join(lines)

    def peak(copies: int) -> tuple[int, int]:
        d = tmp_path / f"c{copies}"
        d.mkdir()
        for i in range(copies):
            (d / f"part{i}.txt").write_text(unit)
        files = sorted(d.iterdir())
        tracemalloc.start()
        try:
            out = packing.token_cache(files, "text", demo_tok, f"k{copies}", tmp_path / "cache",
                                      1, batch_chars=20_000)  # fmt: skip
            return tracemalloc.get_traced_memory()[1], packing.read_manifest(out)["total_tokens"]
        finally:
            tracemalloc.stop()

    small, n_small = peak(1)
    large, n_large = peak(4)
    assert n_large == 4 * n_small
    # flat: 4x the tokens, (almost) the same peak; a Python list of the large stream alone
    # (the previous implementation) would take >= 8 bytes per token in pointers
    assert large < 1.2 * small + (256 << 10), (small, large)
    assert large < n_large * 8, (large, n_large)


def test_cli_exit_2_for_a_corpus_too_small(tmp_path, capsys):
    from orchestrator.cli import main

    f = tmp_path / "tiny.txt"
    f.write_text("a few words only")
    code = main(["pretrain", f"data.paths=[{f}]", f"data.cache_dir={tmp_path / 'c'}",
                 "data.tokenizer.vocab_size=300", "--dry-run"])  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2, err
    assert "data.block_size" in err and "Add text to data.paths" in err


def test_shared_storage_check_names_the_nodes_that_cannot_see_the_cache(tmp_path):
    from orchestrator.data.shared import read_marker, shared_error, unshared_nodes

    marker = tmp_path / ".fedray-shared-x"
    marker.write_text("tok")
    # node "b" has its own disk: the driver's file is not there
    views = {"a": str(marker), "b": str(tmp_path / "elsewhere" / marker.name)}
    bad = unshared_nodes(marker, "tok", ["a", "b"], lambda n, _: read_marker(views[n]))
    assert bad == ["b"]
    e = shared_error(tmp_path, "data.cache_dir", ["10.0.0.7"], 2)
    assert e.key == "data.cache_dir"
    assert "1 of 2 nodes (10.0.0.7)" in str(e) and "shared filesystem" in str(e)


@pytest.mark.parametrize("address", [None, "127.0.0.1:6379"])
def test_on_a_cluster_tokenization_runs_connected_after_the_shared_storage_check(
    tmp_path, monkeypatch, address
):
    """With cluster.address, pretrain joins the cluster, checks data.cache_dir is shared, then
    prepares data with Ray tasks; without it, data is prepared before any Ray starts."""
    import contextlib

    from orchestrator.config import PretrainJob, load_config
    from orchestrator.pretrain import runner

    calls: list[tuple] = []

    @contextlib.contextmanager
    def fake_cluster(cfg):
        calls.append(("join", cfg.address))
        yield

    class Stop(Exception):
        pass

    def fake_prepare(cfg, on_cluster=False, objective="causal"):
        calls.append(("prepare", on_cluster))
        raise Stop

    monkeypatch.setattr(runner, "check_reachable", lambda cfg: None)
    monkeypatch.setattr(runner, "ray_cluster", fake_cluster)
    monkeypatch.setattr(runner, "check_capacity", lambda s, c: calls.append(("capacity",)))
    monkeypatch.setattr(runner, "check_shared_storage", lambda d, k: calls.append(("shared", d, k)))
    monkeypatch.setattr(runner, "prepare_text_data", fake_prepare)
    overrides = [f"data.cache_dir={tmp_path / 'cache'}", f"run.root={tmp_path / 'runs'}"]
    if address:
        overrides.append(f"cluster.address={address}")
    job = load_config(PretrainJob, None, overrides, default_preset="pretrain-tiny")
    with pytest.raises(Stop):
        runner.pretrain(job)
    if address:
        cache = (tmp_path / "cache").resolve()
        assert calls == [
            ("join", address),
            ("capacity",),
            ("shared", cache, "data.cache_dir"),
            ("prepare", True),
        ]
    else:
        assert calls == [("prepare", False)]


def test_small_corpora_tokenize_inline_even_on_a_cluster(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x" * 1000)
    from orchestrator.data.packing import resolve_num_proc

    # no Ray needed: below 16 MB the driver tokenizes in-process whatever the mode
    assert resolve_num_proc(None, [f], on_cluster=True) == 1
    assert resolve_num_proc(3, [f], on_cluster=True) == 3


def test_fast_encoding_gives_the_ids_of_call_and_respects_truncation(demo_tok):
    """The Rust fast path is only a speed-up: the same ids as ``tokenizer(...)``; a tokenizer
    whose backend has truncation set goes through ``__call__`` (which switches it off)."""
    from orchestrator.data.tokenizer import encode_texts

    texts = [
        demo_path("kjv_pentateuch.txt").read_text()[i : i + 3000] for i in range(0, 30000, 3000)
    ]
    want = demo_tok(texts, add_special_tokens=False)["input_ids"]
    assert encode_texts(demo_tok, texts) == want
    backend = demo_tok.backend_tokenizer
    backend.enable_truncation(max_length=8)
    try:
        assert encode_texts(demo_tok, texts) == want
        assert max(map(len, want)) > 8
    finally:
        backend.no_truncation()
