"""The held-out rows ``fedray compress`` measures quality and speed on: never rows the model was
trained on.

- ``--eval-data FILE``: a labelled table (``text`` + ``label`` columns: csv/jsonl/json/parquet)
  for a classifier, or a text file / table for a causal LM.
- Otherwise the run the export came from (``RUN_DIR/config.yaml`` beside ``RUN_DIR/export``):
  a pretraining run's validation blocks (the same fixed split its training held out), or every
  simulated site's held-out rows of a federated run, cut by the code the sites ran
  (:func:`clients.site_data.load_site_data`), as the centralized baseline does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from clients.train import Encoded, encode
from orchestrator.compress.inputs import CompressError, ExportInfo

DEFAULT_MAX_LENGTH = 128


def label_names(config: Any) -> list[str]:
    """A classifier's class names in id order (``id2label`` of its config)."""
    return [str(config.id2label[i]) for i in range(int(config.num_labels))]


def from_file(
    path: Path, info: ExportInfo, tok: PreTrainedTokenizerBase, config: Any, max_length: int
) -> Encoded:
    """Rows of ``--eval-data`` (``text`` and, for a classifier, ``label`` columns)."""
    from orchestrator.data.sources import read_columns

    if not path.is_file():
        raise CompressError(f"--eval-data {str(path)!r} is not a file")
    texts, labels, _ = read_columns(str(path), "text", "label", "")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CompressError(f"--eval-data {str(path)!r} has no text rows")
    if info.task != "classification":
        return encode(tok, texts, max_length)
    if labels is None:
        raise CompressError(f"--eval-data {str(path)!r}: a classifier needs a 'label' column")
    names = label_names(config)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise CompressError(
            f"--eval-data {str(path)!r}: labels {unknown[:5]} are not the model's classes {names}"
        )
    return encode(tok, texts, max_length, labels, names)


def run_config(export: Path) -> Path | None:
    """The config of the run an export came from (``RUN_DIR/config.yaml``), if there is one."""
    cfg = export.resolve().parent / "config.yaml"
    return cfg if cfg.is_file() else None


def from_run(cfg: Path, info: ExportInfo, tok: PreTrainedTokenizerBase, config: Any) -> Encoded:
    """The held-out rows of the run whose config is ``cfg`` (pretraining or federated)."""
    import yaml

    raw = yaml.safe_load(cfg.read_text()) or {}
    if "federation" in raw:
        return _federated_rows(cfg, tok, config)
    return _validation_blocks(cfg)


def _validation_blocks(cfg: Path) -> Encoded:
    from orchestrator.config.loader import load_config
    from orchestrator.config.schema import PretrainJob
    from orchestrator.data import prepare_text_data

    job = load_config(PretrainJob, str(cfg))
    val = prepare_text_data(job.data).packed.val
    ids = torch.from_numpy(val[: len(val)].astype("int64"))
    return Encoded(ids, torch.ones_like(ids), None)


def _federated_rows(cfg: Path, tok: PreTrainedTokenizerBase, config: Any) -> Encoded:
    from clients.site_data import load_site_data
    from orchestrator.config.federated import FederatedJob
    from orchestrator.config.loader import load_config
    from orchestrator.contract.model import ModelSpec
    from orchestrator.contract.task import site_task
    from orchestrator.federated.setup import with_bundled_paths

    job = with_bundled_paths(load_config(FederatedJob, str(cfg)))
    names = label_names(config) if job.task.kind == "classification" else []
    task = site_task(job, ModelSpec(task=job.task.kind, hf_config={}), tok, names)
    n = job.federation.num_sites
    sites = [load_site_data({"partition-id": i, "num-partitions": n}, task) for i in range(n)]
    texts = [t for s in sites for t in s.eval_texts]
    labels = [y for s in sites for y in s.eval_labels or []] if names else None
    return encode(tok, texts, job.task.max_length, labels, names)


def held_out_rows(
    info: ExportInfo,
    tok: PreTrainedTokenizerBase,
    config: Any,
    eval_data: Path | None,
    max_rows: int,
) -> tuple[Encoded, str]:
    """The first ``max_rows`` held-out rows and where they came from."""
    max_length = min(DEFAULT_MAX_LENGTH, int(getattr(config, "n_positions", DEFAULT_MAX_LENGTH)))
    if eval_data is not None:
        rows, source = from_file(eval_data, info, tok, config, max_length), str(eval_data)
    elif (cfg := run_config(info.path)) is not None:
        rows, source = from_run(cfg, info, tok, config), f"held-out rows of the run ({cfg})"
    else:
        raise CompressError(
            f"no held-out data: {str(info.path)!r} has no run config beside it "
            "(RUN_DIR/config.yaml); pass --eval-data FILE (text rows, and a label column for a "
            "classifier) that the model was not trained on"
        )
    n = min(len(rows), max_rows)
    return rows.batch(torch.arange(n)), source


__all__ = ["DEFAULT_MAX_LENGTH", "from_file", "from_run", "held_out_rows", "label_names"]
