"""What the server prepares before round 1: tokenizer, class names, the model spec and the
starting model (``model.path`` = a local HF dir, e.g. a ``fedray pretrain`` export, or a model
built from ``model.*``), and the site task every message carries."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError
from orchestrator.contract.model import (
    ModelSpec,
    base_model,
    classification_config,
    trainable_names,
    with_adapters,
)
from orchestrator.contract.partition import Partition, site_indices, site_sizes
from orchestrator.contract.quantized import quantized_modules
from orchestrator.contract.task import SiteTask, site_task
from orchestrator.data.sources import (
    DEMO_LABELLED,
    DEMO_PRETRAIN,
    demo_path,
    fingerprint,
    iter_texts,
    read_columns,
)


@dataclass
class ServerSetup:
    job: FederatedJob
    spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]
    model: torch.nn.Module
    update_keys: list[str]
    task: SiteTask
    """What every train/evaluate message carries (its ``config`` record)."""


BUNDLED_PREFIX = "demo:"
"""``model.path`` / ``data.tokenizer.path`` ``demo:NAME`` = the directory ``NAME`` bundled under
``orchestrator/data/demo`` (the default preset's ``demo:tweets-bpe``: a BPE fitted to tweets that
are not in the demo file, built by ``python -m orchestrator.data.demo_model``)."""


def with_bundled_paths(job: FederatedJob) -> FederatedJob:
    """``job`` with ``demo:NAME`` model / tokenizer paths turned into the bundled directories."""

    def local(path: str | None) -> str | None:
        if not path or not path.startswith(BUNDLED_PREFIX):
            return path
        return str(demo_path(path.removeprefix(BUNDLED_PREFIX)))

    model, tok = job.model, job.data.tokenizer
    if local(model.path) == model.path and local(tok.path) == tok.path:
        return job
    data = dataclasses.replace(job.data, tokenizer=dataclasses.replace(tok, path=local(tok.path)))
    return dataclasses.replace(
        job, model=dataclasses.replace(model, path=local(model.path)), data=data
    )


def server_data_path(job: FederatedJob) -> Path:
    """The labelled file the server can read (demo tweets when ``data.paths`` is empty)."""
    return Path(job.data.paths[0]).expanduser() if job.data.paths else demo_path(DEMO_LABELLED)


def resolve_tokenizer(job: FederatedJob) -> PreTrainedTokenizerBase:
    """``data.tokenizer.path``, else the tokenizer saved in ``model.path``, else a BPE trained on
    the bundled pretraining corpus (site-independent: the server never sees site text)."""
    from orchestrator.data.tokenizer import load_tokenizer, trained_tokenizer

    job = with_bundled_paths(job)
    if job.data.tokenizer.path:
        return load_tokenizer(job.data.tokenizer.path)
    if job.model.path:
        d = Path(job.model.path).expanduser()
        if any((d / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            return load_tokenizer(d)
        raise ConfigError(
            f"model.path={job.model.path!r} holds no tokenizer; set data.tokenizer.path to the "
            "tokenizer the model was trained with.",
            "data.tokenizer.path",
        )
    files = [demo_path(DEMO_PRETRAIN)]
    tok, _ = trained_tokenizer(
        iter_texts(files), job.data.tokenizer.vocab_size, fingerprint(files), job.data.cache_dir
    )
    return tok


def resolve_labels(job: FederatedJob) -> list[str]:
    if job.task.kind != "classification":
        return []
    if job.task.labels:
        return list(job.task.labels)
    path = server_data_path(job)
    if not path.is_file():
        raise ConfigError(
            f"task.labels is empty and the server cannot read {str(path)!r} to find the classes; "
            "list them with task.labels=[a,b,c].",
            "task.labels",
        )
    # The same cached read (same key) as simulation_partition's: the file is parsed once.
    _, labels, _ = read_columns(
        str(path), job.data.text_field, job.data.label_field, job.partition.column
    )
    if labels is None:
        raise ConfigError(
            f"data file {str(path)!r} has no label column {job.data.label_field!r}; "
            "classification needs one. Set data.label_field.",
            "data.label_field",
        )
    return sorted(set(labels))


def check_inputs(job: FederatedJob) -> None:
    """What the server reads from this machine's files before round 0 (``model.path``, the
    tokenizer, the class names), checked before anything starts: a :class:`ConfigError` here is
    exit code 2 of ``fedray simulate`` / ``fedray server``, not a failed run."""
    job = with_bundled_paths(job)
    if job.model.path:
        check_quantized_base(job)
    tok = resolve_tokenizer(job)
    resolve_labels(job)
    if job.model.path:
        check_pretrained_fits(job, tok)


INT8_CONFIG = "Int8WeightOnlyConfig"
"""The torchao config of a ``fedray compress --method int8`` export (peft's torchao LoRA layer
trains on int8 weights only)."""


def check_quantized_base(job: FederatedJob) -> None:
    """``model.path`` is a local HF dir; a quantized one (``fedray compress``) must be int8 and
    fine-tuned with LoRA: its int8 weights take no gradient step, adapters on top of them do."""
    import importlib.util

    from orchestrator.models import check_model_dir, quantization_of

    path = job.model.path or ""
    qc = quantization_of(check_model_dir(path, allow_quantized=True))
    if qc is None:
        return
    kind = str(((qc.get("quant_type") or {}).get("default") or {}).get("_type", qc))
    if qc.get("quant_method") != "torchao" or kind != INT8_CONFIG:
        raise ConfigError(
            f"model.path={path!r} is quantized with {qc.get('quant_method')} {kind}; fedray "
            "fine-tunes int8 exports only (`fedray compress EXPORT --method int8`), or the float "
            "export it came from.",
            "model.path",
        )
    if job.finetune.mode != "lora":
        raise ConfigError(
            f"finetune.mode={job.finetune.mode}, but model.path={path!r} is an int8 export "
            "(`fedray compress`): its int8 weights cannot take a gradient step. Set "
            "finetune.mode=lora (adapters train on the frozen int8 base), or fine-tune the float "
            "export it came from.",
            "finetune.mode",
        )
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError(
            f"model.path={path!r} is an int8 export, which needs torchao: "
            "pip install 'fedray[compress]'",
            "model.path",
        )


def check_pretrained_fits(job: FederatedJob, tok: PreTrainedTokenizerBase) -> None:
    """A pretrained ``model.path`` must read this tokenizer's ids and ``task.max_length``
    positions; with another tokenizer than its own the ids would mean other words (silently)."""
    from transformers import AutoConfig

    from orchestrator.data.tokenizer import load_tokenizer
    from orchestrator.models import is_encoder

    path = str(Path(job.model.path or "").expanduser())
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    if job.task.kind == "causal_lm" and is_encoder(cfg):
        raise ConfigError(
            f"task.kind=causal_lm, but model.path={job.model.path!r} is a masked-LM encoder "
            f"({cfg.model_type}) with no next-token head. Fine-tune it with "
            "task.kind=classification, or start from a causal LM.",
            "task.kind",
        )
    vocab = getattr(cfg, "vocab_size", None)
    if isinstance(vocab, int) and len(tok) > vocab:
        raise ConfigError(
            f"the tokenizer has {len(tok)} tokens but model.path={job.model.path!r} embeds "
            f"{vocab}: use the model's own tokenizer (data.tokenizer.path={job.model.path})",
            "data.tokenizer.path",
        )
    positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if isinstance(positions, int) and job.task.max_length > positions:
        raise ConfigError(
            f"task.max_length={job.task.max_length} is longer than the {positions} positions "
            f"model.path={job.model.path!r} was built for; set task.max_length<={positions}",
            "task.max_length",
        )
    # With data.tokenizer.path unset the tokenizer *is* the model's own: nothing to compare.
    if job.data.tokenizer.path and (Path(path) / "tokenizer.json").is_file():
        own = load_tokenizer(path)  # loaded as data.tokenizer.path would be (same specials)
        if own.get_vocab() != tok.get_vocab():
            raise ConfigError(
                f"data.tokenizer.path={job.data.tokenizer.path!r} is not the tokenizer "
                f"model.path={job.model.path!r} was trained with (its directory holds its own): "
                "token ids would mean other words. Set data.tokenizer.path to the model "
                "directory (or the same tokenizer), or model.path=null to train from scratch.",
                "data.tokenizer.path",
            )


def prepare(job: FederatedJob) -> ServerSetup:
    """Tokenizer, labels, model spec and the starting model (seeded by ``train.seed``)."""
    from orchestrator.models import hf_config

    job = with_bundled_paths(job)
    tok = resolve_tokenizer(job)
    labels = resolve_labels(job)
    if job.model.path:
        check_quantized_base(job)
        check_pretrained_fits(job, tok)
    config = hf_config(
        job.model, len(tok), job.task.max_length, tok.eos_token_id, allow_quantized=True
    )
    if job.task.kind == "classification":
        config = classification_config(config, labels, tok.pad_token_id)
    f = job.finetune
    spec = ModelSpec(
        task=job.task.kind,
        hf_config=config.to_dict(),
        finetune=f.mode,
        lora_r=f.lora_r,
        lora_alpha=f.lora_alpha,
        lora_dropout=f.lora_dropout,
        lora_targets=list(f.lora_target_modules),
    )
    torch.manual_seed(job.train.seed)
    base = base_model(
        spec, weights_dir=str(Path(job.model.path).expanduser()) if job.model.path else None
    )
    # An int8 export stays int8 here; sites quantize the same modules (contract/quantized.py).
    spec = dataclasses.replace(spec, quantized_modules=quantized_modules(base))
    model = with_adapters(spec, base)
    return ServerSetup(
        job=job,
        spec=spec,
        tokenizer=tok,
        labels=labels,
        model=model,
        update_keys=trainable_names(model),
        task=site_task(job, spec, tok, labels),
    )


def simulation_partition(
    job: FederatedJob, max_sites: int | None = None
) -> tuple[Partition, list[str]]:
    """The simulated sites' slices of the labelled file and its labels (for the summary), cut
    exactly as every simulated site cuts them; bad data is a :class:`ConfigError` that names
    the file, the column or count, and the fix (so ``--dry-run`` catches it, nothing starts).

    ``max_sites``: slices of the first ``max_sites`` sites only (every site's size is still
    checked, from counts): a population of 10,000 sites is not cut up front."""
    p, n = job.partition, job.federation.num_sites
    path = server_data_path(job)
    texts, labels, column = read_columns(
        str(path), job.data.text_field, job.data.label_field, p.column
    )
    where = f"data file {str(path)!r}"
    if labels is None and (job.task.kind == "classification" or p.kind == "dirichlet"):
        raise ConfigError(
            f"{where} has no label column {job.data.label_field!r}; "
            f"{job.task.kind} with partition.kind={p.kind} needs one. Set data.label_field.",
            "data.label_field",
        )
    if p.kind == "natural" and column is None:
        raise ConfigError(
            f"{where} has no column {p.column!r} to split sites by. Set partition.column to a "
            "column of the file, or use partition.kind=iid or dirichlet.",
            "partition.column",
        )
    if len(texts) < 2 * n:
        raise ConfigError(
            f"{where} has {len(texts)} row(s): too few for federation.num_sites={n} (each site "
            f"needs >= 2: one to train on, one held out). Use at most {len(texts) // 2} sites "
            "or a larger file.",
            "federation.num_sites",
        )
    values, seed = labels or texts, job.federation.seed
    try:
        sizes = site_sizes(p.kind, values, column, n, p.alpha, seed)
        shown = range(n if max_sites is None else min(n, max_sites))
        parts = [site_indices(p.kind, values, column, n, p.alpha, seed, i) for i in shown]
    except ValueError as e:
        key = "partition.alpha" if p.kind == "dirichlet" else "federation.num_sites"
        raise ConfigError(f"{where}: {e}", key) from e
    small = [int(i) for i in np.flatnonzero(sizes < 2)][:20]
    if small:
        raise ConfigError(
            f"{where}: site(s) {small} get fewer than 2 rows with partition.kind={p.kind}. "
            "Lower federation.num_sites or change the partition.",
            "federation.num_sites",
        )
    return parts, list(labels) if labels is not None else ["-"] * len(texts)
