"""What is trained and on what: the model, tokenizer and data sections. The same sections serve
pretraining, federated simulation and real sites."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config.fields import require

ENCODER_FAMILIES = ("bert",)
"""Families trained with the masked objective (bidirectional attention: no next-token loss)."""
FAMILIES = ("gpt2", "llama", *ENCODER_FAMILIES)


@dataclass
class ModelConfig:
    """Which language model to train: built from the fields below, or loaded from a local HF dir."""

    family: str = "gpt2"
    """Architecture when building from scratch: ``gpt2`` or ``llama`` (causal decoders), or
    ``bert`` (an encoder, trained with ``train.objective=masked``). Ignored when ``path`` is set."""
    path: str | None = None
    """Local Hugging Face model directory (``config.json`` + weights). No hub access: a hub id
    such as ``gpt2`` is refused. When set, the size fields below are ignored."""
    n_layer: int = 2
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide ``d_model``."""
    n_kv_head: int | None = None
    """Key/value heads (llama only, grouped-query attention); ``None`` = ``n_head``."""
    d_model: int = 128
    """Hidden size."""
    d_ff: int | None = None
    """MLP inner size; ``None`` = 4 x ``d_model`` (gpt2) or 8/3 x ``d_model`` rounded (llama)."""
    max_position: int | None = None
    """Maximum sequence length; ``None`` = ``data.block_size``."""
    dropout: float = 0.0
    """Dropout probability (gpt2, bert: residual, embedding and attention dropout)."""
    tie_embeddings: bool = True
    """Share input and output embedding matrices."""

    def __post_init__(self) -> None:
        require(self.family in FAMILIES, self, "family", "'gpt2', 'llama' or 'bert'")
        for name in ("n_layer", "n_head", "d_model"):
            require(getattr(self, name) >= 1, self, name, "an integer >= 1")
        require(
            self.d_model % self.n_head == 0,
            self,
            "d_model",
            f"a multiple of model.n_head={self.n_head}",
            "Change model.d_model or model.n_head.",
        )
        if self.n_kv_head is not None:
            require(
                self.n_kv_head >= 1 and self.n_head % self.n_kv_head == 0,
                self,
                "n_kv_head",
                f"a divisor of model.n_head={self.n_head}",
            )
        if self.d_ff is not None:
            require(self.d_ff >= 1, self, "d_ff", "an integer >= 1 or null")
        if self.max_position is not None:
            require(self.max_position >= 1, self, "max_position", "an integer >= 1 or null")
        require(0.0 <= self.dropout < 1.0, self, "dropout", "a float in [0, 1)")


@dataclass
class TokenizerConfig:
    """Tokenizer: loaded from a local HF directory, or a byte-level BPE trained on the data."""

    path: str | None = None
    """Local tokenizer directory (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``).
    ``None`` = train a byte-level BPE on the training text (cached, and saved with the run)."""
    vocab_size: int = 2048
    """Vocabulary size when training a tokenizer."""

    def __post_init__(self) -> None:
        require(
            256 + 1 <= self.vocab_size <= 1_000_000,
            self,
            "vocab_size",
            "an integer in [257, 1000000] (byte-level BPE needs the 256 byte tokens + specials)",
        )


@dataclass
class DataConfig:
    """Training text. ``paths`` empty = the bundled demo corpus."""

    paths: list[str] = field(default_factory=list)
    """Local files or directories: ``.txt``, ``.jsonl``/``.json``, ``.csv``, ``.parquet``.
    Directories are searched recursively for those suffixes. Empty = bundled demo corpus."""
    text_field: str = "text"
    """Column/key holding the text in jsonl/csv/parquet files."""
    label_field: str = "label"
    """Column holding class labels (sequence classification in federated fine-tuning)."""
    block_size: int = 128
    """Tokens per training sequence; documents are concatenated and packed into blocks."""
    val_fraction: float = 0.05
    """Fraction of packed blocks held out for validation (perplexity)."""
    cache_dir: str = "~/.cache/fedray"
    """Where tokenized, packed datasets and trained tokenizers are cached (keyed by content)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    num_proc: int | None = None
    """Processes that tokenize the corpus into the cache (pretraining); ``None`` = one per CPU
    (up to 8) for corpora over 16 MB, else 1 (in-process). With ``cluster.address`` set: Ray
    tasks over the cluster's nodes (``None`` = its CPUs, up to 32). The cache is the same either
    way."""

    def __post_init__(self) -> None:
        require(self.block_size >= 8, self, "block_size", "an integer >= 8")
        require(
            self.num_proc is None or self.num_proc >= 1, self, "num_proc", "null or an integer >= 1"
        )
        require(0.0 < self.val_fraction < 0.5, self, "val_fraction", "a float in (0, 0.5)")
