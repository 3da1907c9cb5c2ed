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


def load_site_data(node_config: Mapping[str, object], task: SiteTask) -> SiteData:
    """This site's train and held-out examples (see the module docstring for the keys)."""
    need_labels = task.spec.task == "classification"
    cap = task.partition.max_examples_per_site or None
    if "data-path" in node_config:
        path = Path(str(node_config["data-path"])).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"node config data-path={str(path)!r} is not a file")
        texts, labels, _ = read_columns(str(path), task.text_field, task.label_field, "")
        idx = np.arange(len(texts))
        name = str(node_config.get("site-name", path.stem))
        seed = task.partition_seed
    elif "partition-id" in node_config and "num-partitions" in node_config:
        pid, num = int(node_config["partition-id"]), int(node_config["num-partitions"])  # type: ignore[arg-type]
        path = Path(task.sim_data_path) if task.sim_data_path else demo_path(DEMO_LABELLED)
        texts, labels, column = read_columns(
            str(path), task.text_field, task.label_field, task.partition.column
        )
        if task.partition.kind == "dirichlet" and labels is None:
            raise ValueError(f"{path}: dirichlet partitioning needs column {task.label_field!r}")
        if task.partition.kind == "natural" and column is None:
            raise ValueError(f"{path}: natural partitioning needs column {task.partition.column!r}")
        # Only this site's rows (lazy): the cost does not grow with the number of sites.
        idx = site_indices(
            task.partition.kind,
            labels or texts,
            column,
            num,
            task.partition.alpha,
            task.partition_seed,
            pid,
        )
        name = f"site-{pid}"
        seed = task.partition_seed + pid
    else:
        raise ValueError(
            "this site has no data: set node config data-path=/path/to/file "
            "(flower-supernode --node-config 'data-path=...') or partition-id + num-partitions"
        )
    if need_labels and labels is None:
        raise ValueError(f"{path}: classification needs a {task.label_field!r} column")
    if len(idx) < 2:
        raise ValueError(
            f"{path}: this site has {len(idx)} usable row(s); it needs at least 2 (one to train "
            "on, one held out for evaluation)"
        )
    train_idx, eval_idx = train_eval_split(idx, task.partition.eval_fraction, seed, cap)

    def pick(values: tuple[str, ...] | None, ix: np.ndarray) -> list[str] | None:
        return None if values is None else [values[i] for i in ix]

    return SiteData(
        name=name,
        train_texts=pick(texts, train_idx) or [],
        train_labels=pick(labels, train_idx) if need_labels else None,
        eval_texts=pick(texts, eval_idx) or [],
        eval_labels=pick(labels, eval_idx) if need_labels else None,
    )
