"""What the server prepares before round 1: tokenizer, class names, the model spec and the
starting model (``model.path`` = a local HF dir, e.g. a ``fedray pretrain`` export, or a model
built from ``model.*``), and the site task every message carries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError
from orchestrator.contract.model import ModelSpec, build, classification_config, trainable_names
from orchestrator.contract.task import SiteTask, site_task
from orchestrator.data.sources import (
    DEMO_LABELLED,
    DEMO_PRETRAIN,
    demo_path,
    fingerprint,
    iter_texts,
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


def server_data_path(job: FederatedJob) -> Path:
    """The labelled file the server can read (demo tweets when ``data.paths`` is empty)."""
    return Path(job.data.paths[0]).expanduser() if job.data.paths else demo_path(DEMO_LABELLED)


def resolve_tokenizer(job: FederatedJob) -> PreTrainedTokenizerBase:
    """``data.tokenizer.path``, else the tokenizer saved in ``model.path``, else a BPE trained on
    the bundled pretraining corpus (site-independent: the server never sees site text)."""
    from orchestrator.data.tokenizer import load_tokenizer, trained_tokenizer

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
    from orchestrator.data.sources import load_labelled

    path = server_data_path(job)
    if not path.is_file():
        raise ConfigError(
            f"task.labels is empty and the server cannot read {str(path)!r} to find the classes; "
            "list them with task.labels=[a,b,c].",
            "task.labels",
        )
    _, labels, _ = load_labelled(path, job.data.text_field, job.data.label_field)
    return sorted(set(labels))


def prepare(job: FederatedJob) -> ServerSetup:
    """Tokenizer, labels, model spec and the starting model (seeded by ``train.seed``)."""
    from orchestrator.models import check_model_dir, hf_config

    tok = resolve_tokenizer(job)
    labels = resolve_labels(job)
    if job.model.path:
        check_model_dir(job.model.path)
    config = hf_config(job.model, len(tok), job.task.max_length, tok.eos_token_id)
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
    model = build(
        spec, weights_dir=str(Path(job.model.path).expanduser()) if job.model.path else None
    )
    return ServerSetup(
        job=job,
        spec=spec,
        tokenizer=tok,
        labels=labels,
        model=model,
        update_keys=trainable_names(model),
        task=site_task(job, spec, tok, labels),
    )
