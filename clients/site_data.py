"""Find a site's own examples: a local file at a real site, or a slice of a shared file in simulation.

Node config keys (``flower-supernode --node-config "..."``; set by Flower in simulation):

- ``data-path``: a local csv/jsonl/json/parquet table (text + label columns) or a ``.txt`` file
  (one example per non-empty line; causal LM only). Optional ``site-name`` names the site in
  the server's table (default: the file's stem).
- ``partition-id`` + ``num-partitions``: a simulated site; it cuts slice ``partition-id`` of the
  file named by the server (``sim-data-path``, default the bundled demo tweets) with the
  partitioner and seed from the message config, so every process computes the same slices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from orchestrator.contract.partition import site_indices, train_eval_split
from orchestrator.contract.task import SiteTask
from orchestrator.data.sources import DEMO_LABELLED, demo_path, read_columns


@dataclass
class SiteData:
    name: str
    train_texts: list[str]
    train_labels: list[str] | None
    eval_texts: list[str]
    eval_labels: list[str] | None


class _Rows(NamedTuple):
    """A site's usable rows before the train/held-out split."""

    path: Path
    texts: tuple[str, ...]
    labels: tuple[str, ...] | None
    idx: np.ndarray
    """The row numbers that are this site's."""
    name: str
    seed: int
    """Seed of this site's train/held-out split."""


def load_site_data(node_config: Mapping[str, object], task: SiteTask) -> SiteData:
    """This site's train and held-out examples (see the module docstring for the keys)."""
    if "data-path" in node_config:
        rows = _own_file(node_config, task)
    elif "partition-id" in node_config and "num-partitions" in node_config:
        rows = _simulated_slice(node_config, task)
    else:
        raise ValueError(
            "this site has no data: set node config data-path=/path/to/file "
            "(flower-supernode --node-config 'data-path=...') or partition-id + num-partitions"
        )
    return _split(rows, task)


def _own_file(node_config: Mapping[str, object], task: SiteTask) -> _Rows:
    """A real site: every row of its own file."""
    path = Path(str(node_config["data-path"])).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"node config data-path={str(path)!r} is not a file")
    texts, labels, _ = read_columns(str(path), task.text_field, task.label_field, "")
    name = str(node_config.get("site-name", path.stem))
    return _Rows(path, texts, labels, np.arange(len(texts)), name, task.partition_seed)


def _simulated_slice(node_config: Mapping[str, object], task: SiteTask) -> _Rows:
    """A simulated site: its slice of the shared file, cut as every process cuts it."""
    pid, num = int(node_config["partition-id"]), int(node_config["num-partitions"])  # type: ignore[arg-type]
    path = Path(task.sim_data_path) if task.sim_data_path else demo_path(DEMO_LABELLED)
    part = task.partition
    texts, labels, column = read_columns(str(path), task.text_field, task.label_field, part.column)
    if part.kind == "dirichlet" and labels is None:
        raise ValueError(f"{path}: dirichlet partitioning needs column {task.label_field!r}")
    if part.kind == "natural" and column is None:
        raise ValueError(f"{path}: natural partitioning needs column {part.column!r}")
    # Only this site's rows (lazy): the cost does not grow with the number of sites.
    idx = site_indices(
        part.kind, labels or texts, column, num, part.alpha, task.partition_seed, pid
    )
    return _Rows(path, texts, labels, idx, f"site-{pid}", task.partition_seed + pid)


def _split(rows: _Rows, task: SiteTask) -> SiteData:
    """Check the rows, then split them into train and held-out examples."""
    need_labels = task.spec.task == "classification"
    if need_labels and rows.labels is None:
        raise ValueError(f"{rows.path}: classification needs a {task.label_field!r} column")
    if len(rows.idx) < 2:
        raise ValueError(
            f"{rows.path}: this site has {len(rows.idx)} usable row(s); it needs at least 2 (one "
            "to train on, one held out for evaluation)"
        )
    cap = task.partition.max_examples_per_site or None
    train_idx, eval_idx = train_eval_split(rows.idx, task.partition.eval_fraction, rows.seed, cap)

    def pick(values: tuple[str, ...] | None, ix: np.ndarray) -> list[str] | None:
        return None if values is None else [values[i] for i in ix]

    return SiteData(
        name=rows.name,
        train_texts=pick(rows.texts, train_idx) or [],
        train_labels=pick(rows.labels, train_idx) if need_labels else None,
        eval_texts=pick(rows.texts, eval_idx) or [],
        eval_labels=pick(rows.labels, eval_idx) if need_labels else None,
    )
