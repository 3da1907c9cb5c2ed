"""Tokenizers: load a local Hugging Face tokenizer directory, or train one on the corpus: a
byte-level BPE (causal objective) or a BERT-style WordPiece with ``[CLS] [SEP] [MASK] [PAD]``
(masked objective).

Trained tokenizers are cached by (corpus fingerprint, vocab size), so every worker and every rerun
gets the identical tokenizer; the run saves a copy next to its export.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from orchestrator.config.loader import ConfigError

EOS = "<|endoftext|>"
PAD = "<|pad|>"
BERT_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
"""The WordPiece tokenizer's special tokens, ids 0-4 in this order; ``[SEP]`` also separates
documents in the token stream (its EOS)."""


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (never from a hub)."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(
            f"data.tokenizer.path: {str(path)!r} is not a local directory. Hub ids cannot be "
            "downloaded here; point to a directory with tokenizer.json (or vocab.json + "
            "merges.txt), or set data.tokenizer.path=null to train one.",
            "data.tokenizer.path",
        )
    try:
        if (p / "tokenizer.json").exists() or (p / "tokenizer_config.json").exists():
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        elif (p / "vocab.json").exists() and (p / "merges.txt").exists():
            # GPT-2 style vocab.json + merges.txt without a tokenizer_config.json.
            tok = GPT2TokenizerFast.from_pretrained(str(p), local_files_only=True)
        else:
            raise OSError("no tokenizer.json, tokenizer_config.json or vocab.json + merges.txt")
    except OSError as e:
        raise ConfigError(
            f"data.tokenizer.path: could not load a tokenizer from {str(p)!r}: {e}",
            "data.tokenizer.path",
        ) from e
    return ensure_special_tokens(tok)


def ensure_special_tokens(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer an EOS (document separator: its ``[SEP]`` if it has one) and a PAD
    token if it lacks them."""
    if tok.eos_token is None and tok.sep_token is not None:
        tok.eos_token = tok.sep_token
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style) tokenizer on ``texts``."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS, PAD],
        show_progress=False,
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=EOS
    )
    return tok


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece (lower-cased; ``[CLS] text [SEP]`` when special tokens are
    added, as fine-tuning inputs are) on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    specials = list(BERT_SPECIALS.values())
    wp = Tokenizer(models.WordPiece(unk_token=BERT_SPECIALS["unk_token"]))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=specials, show_progress=False
    )
    wp.train_from_iterator(texts, trainer=trainer)
    cls, sep = BERT_SPECIALS["cls_token"], BERT_SPECIALS["sep_token"]
    wp.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, wp.token_to_id(cls)), (sep, wp.token_to_id(sep))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=wp, eos_token=sep, **BERT_SPECIALS)


def trained_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    fingerprint: str,
    cache_dir: str | os.PathLike[str],
    kind: str = "bpe",
) -> tuple[PreTrainedTokenizerFast, Path]:
    """Train (or reuse from cache) a tokenizer for this corpus, ``kind`` ``bpe`` (byte-level)
    or ``wordpiece`` (BERT specials); returns it and its cache directory."""
    target = Path(cache_dir).expanduser() / "tokenizers" / f"{kind}-{fingerprint}-v{vocab_size}"
    if (target / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(target)), target
    tok = (
        train_wordpiece(texts, vocab_size) if kind == "wordpiece" else train_bpe(texts, vocab_size)
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Save to a temp dir and rename, so a concurrent reader never sees half a tokenizer.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    tok.save_pretrained(str(tmp))
    try:
        os.rename(tmp, target)
    except OSError:  # another process won the race; use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(target)), target


def check_mask_token(tok: PreTrainedTokenizerBase, where: str) -> None:
    """The masked objective replaces tokens by the tokenizer's mask token: it must have one."""
    if tok.mask_token is None:
        raise ConfigError(
            f"data.tokenizer.path: the tokenizer at {where!r} has no mask token, which "
            "train.objective=masked needs. Use a tokenizer with one (e.g. [MASK]), or set "
            "data.tokenizer.path=null to train a WordPiece with [CLS] [SEP] [MASK] [PAD].",
            "data.tokenizer.path",
        )


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """Stable hash of a tokenizer's vocabulary and merges (part of the packed-data cache key)."""
    import hashlib

    backend = getattr(tok, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else repr(sorted(tok.get_vocab().items()))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def encode_texts(tok: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of ``texts``, no special tokens. A fast tokenizer with no truncation or padding
    set is called through its Rust ``encode_batch_fast``: the same ids, without the offsets
    ``__call__`` computes and this discards; anything else goes through ``__call__``, which
    resets truncation and padding."""
    backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
    if backend is not None and backend.truncation is None and backend.padding is None:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tok(texts, add_special_tokens=False)["input_ids"]
