"""What travels from the server to a site in every message's ``config`` ConfigRecord.

A real site holds only its data path (node config ``data-path``); everything else it needs to
build, train and evaluate the model comes from the server, in these keys:

========================  ===================================================================
``server-round``          int, set by the strategy
``model-spec``            JSON of :class:`~orchestrator.contract.model.ModelSpec`
                          (task, HF config, full/LoRA settings)
``tokenizer``             JSON: the fast tokenizer (``tokenizers`` JSON) + its special tokens
``labels``                list[str], class names in label-id order (classification)
``text-field``            column with the text; ``label-field``: column with the class name
``max-length``            tokens per example
``local-epochs``          int; ``local-steps``: int, 0 = use epochs
``batch-size``, ``lr``, ``weight-decay``, ``beta1``, ``beta2``, ``grad-clip``, ``seed``
``proximal-mu``           float, FedProx only (added by the strategy)
``partition-kind``        natural | dirichlet | iid; ``partition-column``, ``partition-alpha``,
                          ``partition-seed``: how a *simulated* site cuts its slice
``eval-fraction``         share of a site's rows held out for its local evaluation
``max-examples``          cap on a site's rows, 0 = none
``sim-data-path``         the labelled file simulated sites partition ("" = bundled demo);
                          ignored by a site whose node config has ``data-path``
========================  ===================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from flwr.app import ConfigRecord
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from orchestrator.config.federated import FederatedJob
from orchestrator.contract.model import ModelSpec

SPECIAL_TOKENS = ("eos_token", "bos_token", "pad_token", "unk_token")


def tokenizer_to_json(tok: PreTrainedTokenizerBase) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"tokenizer {type(tok).__name__} is not a fast tokenizer; sites need its "
            "tokenizers JSON. Save it with tokenizer.json (PreTrainedTokenizerFast)."
        )
    special = {k: getattr(tok, k) for k in SPECIAL_TOKENS if getattr(tok, k, None) is not None}
    return json.dumps({"tokenizer": backend.to_str(), "special": special})


@lru_cache(maxsize=4)
def tokenizer_from_json(text: str) -> PreTrainedTokenizerFast:
    """Rebuild the server's tokenizer (cached: the same JSON arrives every round)."""
    from tokenizers import Tokenizer

    payload = json.loads(text)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(payload["tokenizer"]), **payload["special"]
    )


@dataclass(frozen=True)
class SiteTask:
    """The decoded ``config`` record of a train/evaluate message."""

    server_round: int
    spec: ModelSpec
    tokenizer_json: str
    labels: tuple[str, ...]
    text_field: str
    label_field: str
    max_length: int
    local_epochs: int
    local_steps: int
    batch_size: int
    lr: float
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    seed: int
    proximal_mu: float
    partition_kind: str
    partition_column: str
    partition_alpha: float
    partition_seed: int
    eval_fraction: float
    max_examples: int
    sim_data_path: str

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        return tokenizer_from_json(self.tokenizer_json)

    @classmethod
    def from_config(cls, cfg: ConfigRecord) -> SiteTask:
        try:
            return cls(
                server_round=int(cfg.get("server-round", 0)),
                spec=ModelSpec.from_json(str(cfg["model-spec"])),
                tokenizer_json=str(cfg["tokenizer"]),
                labels=tuple(str(x) for x in cfg.get("labels", [])),  # type: ignore[union-attr]
                text_field=str(cfg["text-field"]),
                label_field=str(cfg["label-field"]),
                max_length=int(cfg["max-length"]),
                local_epochs=int(cfg["local-epochs"]),
                local_steps=int(cfg["local-steps"]),
                batch_size=int(cfg["batch-size"]),
                lr=float(cfg["lr"]),
                weight_decay=float(cfg["weight-decay"]),
                beta1=float(cfg["beta1"]),
                beta2=float(cfg["beta2"]),
                grad_clip=float(cfg["grad-clip"]),
                seed=int(cfg["seed"]),
                proximal_mu=float(cfg.get("proximal-mu", 0.0)),
                partition_kind=str(cfg["partition-kind"]),
                partition_column=str(cfg["partition-column"]),
                partition_alpha=float(cfg["partition-alpha"]),
                partition_seed=int(cfg["partition-seed"]),
                eval_fraction=float(cfg["eval-fraction"]),
                max_examples=int(cfg["max-examples"]),
                sim_data_path=str(cfg.get("sim-data-path", "")),
            )
        except KeyError as e:
            raise ValueError(
                f"message config lacks key {e}; is the server a fedray ServerApp of the same "
                "version as this site?"
            ) from e


def site_config(
    job: FederatedJob, spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, labels: list[str]
) -> ConfigRecord:
    """The config record every train/evaluate message carries (see the module docstring)."""
    t, p = job.train, job.partition
    return ConfigRecord(
        {
            "model-spec": spec.to_json(),
            "tokenizer": tokenizer_to_json(tokenizer),
            "labels": list(labels),
            "text-field": job.data.text_field,
            "label-field": job.data.label_field,
            "max-length": job.task.max_length,
            "local-epochs": job.finetune.local_epochs,
            "local-steps": job.finetune.local_steps or 0,
            "batch-size": t.micro_batch_size,
            "lr": t.lr,
            "weight-decay": t.weight_decay,
            "beta1": t.beta1,
            "beta2": t.beta2,
            "grad-clip": t.grad_clip,
            "seed": t.seed,
            "partition-kind": p.kind,
            "partition-column": p.column,
            "partition-alpha": p.alpha,
            "partition-seed": job.federation.seed,
            "eval-fraction": p.eval_fraction,
            "max-examples": p.max_examples_per_site or 0,
            "sim-data-path": str(Path(job.data.paths[0]).expanduser().absolute())
            if job.data.paths
            else "",
        }
    )
