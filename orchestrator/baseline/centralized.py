"""``fedray simulate --centralized``: the centralized baseline of a simulated federation.

    fedray simulate --centralized                        # baseline of the default demo
    fedray simulate my.yaml federation.num_sites=20 partition.kind=dirichlet --centralized

The same job, with every simulated site's *training* rows pooled at one site: the same starting
model (``train.seed``), the same tokenizer and labels, each site's rows cut by the same code the
sites run (:func:`clients.site_data.load_site_data`), trained by the same per-batch code
(:mod:`clients.train`). Equal compute: each round processes as many examples as the federation
processes in a round (:func:`examples_per_round` summed over the sites that train in a round;
with ``federation.sites_per_round`` < ``num_sites``, the average over the sites), in batches of
``train.micro_batch_size`` drawn from shuffled passes over the union. Unlike a site, one AdamW
runs for the whole run (ordinary centralized training). After each evaluated round the model is
evaluated on each site's own held-out rows, so the round table and ``metrics.jsonl`` have the
per-site rows and the pooled (global) metrics exactly as a federated run has them.

It runs in this process (no Ray, no Flower): the one server-side module that imports the site's
code, because the baseline must train and evaluate exactly as a site does. No checkpoints: a
baseline is rerun, not resumed. Site-side stages (simulated attacks, local DP, compression)
do not apply: the baseline is the honest, undefended, uncompressed reference.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients.site_data import load_site_data
from clients.train import Encoded, encode, evaluate, task_loss
from orchestrator.config.federated import FederatedJob
from orchestrator.config.loader import ConfigError, to_yaml
from orchestrator.contract.metrics import NUM_EXAMPLES, classification_metrics, perplexity
from orchestrator.contract.model import export
from orchestrator.federated.report import RoundTable, print_partition
from orchestrator.federated.server_app import FederatedResult
from orchestrator.federated.setup import ServerSetup, prepare
from orchestrator.report import report_hint
from orchestrator.runs import append_metrics, resolve_run_dir
from orchestrator.tracking import log_round

log = logging.getLogger(__name__)


def examples_per_round(n: int, batch_size: int, local_steps: int | None, local_epochs: int) -> int:
    """Examples a site with ``n`` training rows processes in one round, exactly as
    :func:`clients.train.batch_order` deals them: shuffled epochs cut into batches, the last
    batch of an epoch holding the remainder; ``local_steps`` cycles epochs."""
    if n < 1:
        return 0
    per_epoch = math.ceil(n / batch_size)
    steps = local_steps if local_steps else local_epochs * per_epoch
    epochs, rest = divmod(steps, per_epoch)
    return epochs * n + min(rest * batch_size, n)


def federation_examples_per_round(job: FederatedJob, site_sizes: Sequence[int]) -> int:
    """Examples the whole federation processes in a round: the sum over the sites that train
    (all of them, or ``sampled/num_sites`` of the sum when sites are sampled, rounded)."""
    f, hp = job.finetune, job.train
    total = sum(
        examples_per_round(n, hp.micro_batch_size, f.local_steps, f.local_epochs)
        for n in site_sizes
    )
    fed = job.federation
    return round(total * fed.sampled_sites / fed.num_sites)


def example_stream(n: int, seed: int) -> Iterator[int]:
    """Row indices of shuffled passes over ``n`` rows, forever (seeded)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n, generator=g).tolist()


class CentralizedRun:
    """The baseline of ``job``: pooled training rows, per-site held-out rows."""

    def __init__(self, job: FederatedJob, run_dir: Path, setup: ServerSetup | None = None):
        self.job, self.run_dir = job, run_dir
        self.setup = setup or prepare(job)
        task = self.setup.task
        n = job.federation.num_sites
        sites = [load_site_data({"partition-id": i, "num-partitions": n}, task) for i in range(n)]

        def enc(texts: list[str], labels: list[str] | None) -> Encoded:
            return encode(task.tokenizer, texts, task.max_length, labels, task.labels)

        self.site_names = [s.name for s in sites]
        self.site_sizes = [len(s.train_texts) for s in sites]
        self.site_labels = [Counter(s.train_labels or ["-"] * len(s.train_texts)) for s in sites]
        self.train_rows = enc(
            [t for s in sites for t in s.train_texts],
            [y for s in sites for y in s.train_labels or []] if task.labels else None,
        )
        self.eval_rows = [enc(s.eval_texts, s.eval_labels) for s in sites]
        self.per_round = federation_examples_per_round(job, self.site_sizes)
        self.table = RoundTable(job.task.kind)
        self.result = FederatedResult(run_dir, run_dir / "export")
        self.t_run = time.monotonic()

    def partition_rows(self) -> list[dict[str, object]]:
        """What is pooled: each site's training rows (printed before round 0)."""
        return [
            {"site": i, "size": size, "labels": dict(sorted(self.site_labels[i].items()))}
            for i, size in enumerate(self.site_sizes)
        ]

    def evaluate(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Per-site held-out metrics and the pooled ones (as a federated evaluation pools)."""
        task, model = self.setup.task, self.setup.model
        num_labels = len(task.labels)
        sites: dict[str, dict[str, Any]] = {}
        confusion: np.ndarray | None = None
        loss_sum, total = 0.0, 0
        for name, rows in zip(self.site_names, self.eval_rows, strict=True):
            m = evaluate(model, rows, task.spec.task, task.train.micro_batch_size, num_labels)
            c = m.pop("confusion", None)
            if c is not None:
                site_conf = np.asarray(c, dtype=np.int64).reshape(num_labels, num_labels)
                confusion = site_conf if confusion is None else confusion + site_conf
            sites[name] = {**m, "eval-examples": len(rows)}
            loss_sum += float(m["eval-loss"]) * len(rows)  # type: ignore[arg-type]
            total += len(rows)
        pooled: dict[str, Any] = {"eval-loss": loss_sum / max(1, total), NUM_EXAMPLES: total}
        if confusion is not None:
            pooled.update(classification_metrics(confusion))
        else:
            pooled["perplexity"] = perplexity(pooled["eval-loss"])
        return pooled, sites

    def train_round(self, opt: torch.optim.Optimizer, stream: Iterator[int]) -> dict[str, Any]:
        """Exactly ``self.per_round`` examples, in batches of ``train.micro_batch_size``."""
        task, model = self.setup.task, self.setup.model
        hp = task.train
        params = [p for p in model.parameters() if p.requires_grad]
        model.train()
        losses: list[float] = []
        done = 0
        while done < self.per_round:
            size = min(hp.micro_batch_size, self.per_round - done)
            idx = torch.tensor([next(stream) for _ in range(size)])
            loss, _ = task_loss(model, self.train_rows.batch(idx), task.spec.task)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hp.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, hp.grad_clip)
            opt.step()
            losses.append(loss.item())
            done += size
        return {
            "train-loss": sum(losses) / max(1, len(losses)),
            "train-steps": len(losses),
            "examples-processed": done,
            "sites-sampled": 1,
            NUM_EXAMPLES: len(self.train_rows),
        }

    def record(self, server_round: int, t0: float, train: dict[str, Any] | None) -> dict[str, Any]:
        evaluated = self.job.federation.evaluates(server_round)
        ev, sites = self.evaluate() if evaluated else ({}, {})
        rec: dict[str, Any] = {"round": server_round, "centralized": True}
        if train is not None:
            rec["train"] = train
        rec.update(
            eval=ev,
            sites=sites,
            bytes_up=0,
            bytes_down=0,
            round_time_s=round(time.monotonic() - t0, 3),
            elapsed_s=round(time.monotonic() - self.t_run, 3),
        )
        return rec

    def emit(self, rec: dict[str, Any]) -> None:
        append_metrics(self.run_dir / "metrics.jsonl", rec)
        log_round(self.run_dir, self.job.logging, rec)
        self.result.rounds.append(rec)
        self.table.row(rec)

    def run(self) -> FederatedResult:
        # Train like one simulated site: with its cores (a Ray actor of cpus_per_site CPUs), not
        # every core of the machine (torch's default, which thrashes on a shared machine).
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, int(self.job.federation.cpus_per_site)))
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> FederatedResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(to_yaml(self.job))
        hp, model = self.setup.task.train, self.setup.model
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=hp.lr,
            betas=(hp.beta1, hp.beta2),
            weight_decay=hp.weight_decay,
        )
        stream = example_stream(len(self.train_rows), hp.seed)
        self.table.header()
        self.emit(self.record(0, time.monotonic(), None))
        for server_round in range(1, self.job.federation.num_rounds + 1):
            t0 = time.monotonic()
            train = self.train_round(opt, stream)
            self.emit(self.record(server_round, t0, train))
        export(model, self.setup.tokenizer, self.result.export_dir, self.setup.spec)
        return self.result


def centralized(job: FederatedJob) -> FederatedResult:
    """Run the centralized baseline of ``job`` (its own run directory, ``centralized-<time>``
    unless ``run.dir`` / ``run.name`` say otherwise); returns the per-round records."""
    run_dir = resolve_run_dir(job.run, "centralized")
    if (run_dir / "metrics.jsonl").exists():
        raise ConfigError(
            f"run directory {str(run_dir)!r} already holds a run; a centralized baseline is not "
            "resumed. Give it its own run.name (or run.dir).",
            "run.name",
        )
    run = CentralizedRun(job, run_dir)
    print_partition(run.partition_rows(), f"centralized: {job.partition.kind} sites pooled")
    print(
        f"centralized baseline: {sum(run.site_sizes)} training rows at one site, "
        f"{run.per_round} examples per round (as the federation), {job.federation.num_rounds} "
        "rounds"
    )
    result = run.run()
    print(f"run directory: {result.run_dir}\nexport: {result.export_dir}")
    print(report_hint(result.run_dir))
    return result


def centralized_plan(job: FederatedJob) -> dict[str, Any]:
    """What ``--centralized --dry-run`` prints (reads the data, starts nothing)."""
    from orchestrator.federated.simulate import partition_summary

    parts = partition_summary(job)
    return {
        "centralized": "one process, no Ray/Flower: every site's training rows pooled, the "
        "same examples per round as the federation, evaluated on each site's held-out rows",
        "rounds": job.federation.num_rounds,
        "partition": parts,
        "run_dir": str(resolve_run_dir(job.run, "centralized")),
    }


__all__ = [
    "CentralizedRun",
    "centralized",
    "centralized_plan",
    "examples_per_round",
    "federation_examples_per_round",
]
