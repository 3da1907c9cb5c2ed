"""The site task: everything a site needs to train and evaluate, declared once.

A real site holds only its data file (node config ``data-path``); the model, tokenizer and every
hyperparameter arrive from the server in each message's ``config`` ConfigRecord. :class:`SiteTask`
is that record, typed: the server builds one from the job (:func:`site_task`) and encodes it with
:meth:`SiteTask.to_record`; a site decodes it with :meth:`SiteTask.from_record`. The record's keys
come from the field names (``server-round``, ``train.lr``, ``partition.alpha``, ...), so a new
hyperparameter is one field here (or in the config section it reuses), nothing else.

What a site receives is untrusted too: decoding checks every key's type and re-runs the config
sections' own validation, so a malformed or hostile config fails with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from orchestrator.config.compression import CompressionConfig
from orchestrator.config.federated import (
    AttackConfig,
    FederatedJob,
    PartitionConfig,
    SiteTrainConfig,
)
from orchestrator.config.privacy import PrivacyConfig
from orchestrator.contract.model import ModelSpec

SPECIAL_TOKENS = ("eos_token", "bos_token", "pad_token", "unk_token")
MAX_TOKENIZER_JSON = 64 << 20
"""Largest tokenizer JSON a site accepts (a 250k-token vocabulary is ~20 MB)."""


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

    if len(text) > MAX_TOKENIZER_JSON:
        raise ValueError(f"tokenizer JSON of {len(text)} chars exceeds {MAX_TOKENIZER_JSON}")
    payload = json.loads(text)
    special = payload.get("special", {})
    if not isinstance(special, dict) or not set(special) <= set(SPECIAL_TOKENS):
        raise ValueError(f"tokenizer special tokens must be a subset of {SPECIAL_TOKENS}")
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(payload["tokenizer"]),
        **{k: str(v) for k, v in special.items()},
    )


@dataclass(frozen=True)
class SiteTask:
    """The decoded ``config`` record of a train/evaluate message (keys: field names, ``_`` ->
    ``-``, nested sections as ``section.field``)."""

    spec: ModelSpec
    """The model both sides build (task, HF config, full/LoRA); travels as JSON."""
    tokenizer_json: str
    """The server's fast tokenizer (``tokenizers`` JSON) and its special tokens."""
    text_field: str
    """Column with the text in a site's file."""
    label_field: str
    """Column with the class name (classification)."""
    max_length: int
    """Tokens per example (truncate / pad)."""
    train: SiteTrainConfig
    """The local optimiser: the job's ``train`` section as is."""
    local_epochs: int
    """Passes over the site's training split per round (when ``local_steps`` is 0)."""
    partition: PartitionConfig
    """How a *simulated* site cuts its slice, and the held-out fraction every site uses."""
    labels: tuple[str, ...] = ()
    """Class names in label-id order (classification)."""
    local_steps: int = 0
    """Optimizer steps per round; 0 = use ``local_epochs``."""
    partition_seed: int = 0
    """Seed of the simulated partition and each site's train/held-out split."""
    sim_data_path: str = ""
    """The labelled file simulated sites partition ("" = bundled demo); a real site's own
    ``data-path`` wins."""
    attack: AttackConfig = field(default_factory=AttackConfig)
    """Simulated attackers (simulation only; a real site refuses a task with an attack)."""
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    """The job's privacy section: ``local`` mode clips and noises at the site; secure
    aggregation masks there. Sent as is (a site applies what it is told and reports it)."""
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    """How the site encodes its update (``orchestrator/contract/compression.py``)."""
    server_round: int = 0
    """Set by the strategy on each message."""
    proximal_mu: float = 0.0
    """FedProx's proximal coefficient (set by the strategy); 0 = plain local training."""
    base_hash: str = ""
    """LoRA with ``compression.lora_base_once`` (set by the strategy): the hash of the frozen
    base; a message may then carry only the trainable tensors (clients/base_cache.py)."""
    scaffold: bool = False
    """SCAFFOLD (set by the strategy): the train message carries the server control variate
    and the site corrects its local steps with it (clients/scaffold.py)."""
    state_key: str = ""
    """The run identity a site keys its persistent state by (clients/site_state.py); drawn by
    the server when a run starts, kept in its checkpoints. "" = Flower's run id."""
    sim_state_dir: str = ""
    """Where *simulated* sites mirror their state (the run directory's ``site-state``), so a
    resumed simulation finds it; a real site ignores it (its own ``state-dir`` wins)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Keys this version does not know (ignored; a newer server may send more)."""

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        return tokenizer_from_json(self.tokenizer_json)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(_encode(self))

    @classmethod
    def from_record(cls, record: ConfigRecord | dict[str, Any]) -> SiteTask:
        """Decode and validate a received config record (ValueError naming the bad key)."""
        try:
            return _decode(cls, dict(record.items()), "")
        except KeyError as e:
            raise ValueError(
                f"message config lacks key {e}; is the server a fedray ServerApp of the same "
                "version as this site?"
            ) from e


def key_of(name: str) -> str:
    """Record key of a field name: ``server_round`` -> ``server-round``."""
    return name.replace("_", "-")


def site_task(
    job: FederatedJob,
    spec: ModelSpec,
    tokenizer: PreTrainedTokenizerBase | None,
    labels: list[str],
) -> SiteTask:
    """The task every train/evaluate message carries, from the job (server side). ``None`` for
    the tokenizer leaves it out (``--dry-run`` describes a task without building one)."""
    return SiteTask(
        spec=spec,
        tokenizer_json=tokenizer_to_json(tokenizer) if tokenizer is not None else "",
        labels=tuple(labels),
        text_field=job.data.text_field,
        label_field=job.data.label_field,
        max_length=job.task.max_length,
        train=job.train,
        local_epochs=job.finetune.local_epochs,
        local_steps=job.finetune.local_steps or 0,
        partition=job.partition,
        attack=job.attack,
        privacy=job.privacy,
        compression=job.compression,
        partition_seed=job.federation.seed,
        sim_data_path=str(Path(job.data.paths[0]).expanduser().absolute())
        if job.data.paths
        else "",
    )


# ---- the codec: dataclass fields <-> flat ConfigRecord values --------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _encode(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name == "extra":
            continue
        value, key = getattr(obj, f.name), prefix + key_of(f.name)
        if isinstance(value, ModelSpec):
            out[key] = value.to_json()
        elif dataclasses.is_dataclass(value):
            out.update(_encode(value, f"{key}."))
        elif value is None:
            continue  # absent key = None
        elif isinstance(value, tuple):
            out[key] = list(value)
        else:
            out[key] = value
    return out


def _decode(cls: type, record: dict[str, Any], prefix: str) -> Any:
    hints, kwargs = _hints(cls), {}
    known: set[str] = set()
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        key, hint = prefix + key_of(f.name), hints[f.name]
        if hint is ModelSpec:
            known.add(key)
            kwargs[f.name] = ModelSpec.from_json(_typed(record[key], str, key))
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if not any(k.startswith(f"{key}.") for k in record) and f.default_factory is not (
                dataclasses.MISSING
            ):
                continue  # an older server that sends no such section: its defaults
            kwargs[f.name] = _decode(hint, record, f"{key}.")
            known.update(k for k in record if k.startswith(f"{key}."))
        elif key in record:
            known.add(key)
            kwargs[f.name] = _value(record[key], hint, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if _optional(hint):
                kwargs[f.name] = None
            else:
                raise KeyError(key)
    try:
        obj = cls(**kwargs)
    except ValueError as e:  # a config section's own __post_init__ check (FieldError)
        raise ValueError(f"message config {prefix or ''}{e}") from e
    if cls is SiteTask:
        extra = {k: v for k, v in record.items() if k not in known}
        object.__setattr__(obj, "extra", extra)
    return obj


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _value(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _value(value, inner[0], key)
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"message config {key}={value!r}: expected one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise ValueError(f"message config {key}: expected a list, got {type(value).__name__}")
        item_type = args[0] if args else str
        items = [_typed(v, item_type, key) for v in value]
        return tuple(items) if origin is tuple else items
    return _typed(value, hint, key)


def _typed(value: Any, kind: Any, key: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and (
        type(value) is kind or (kind is float and isinstance(value, float))
    ):
        return value
    raise ValueError(
        f"message config {key}: expected {getattr(kind, '__name__', kind)}, "
        f"got {type(value).__name__} {str(value)[:40]!r}"
    )
