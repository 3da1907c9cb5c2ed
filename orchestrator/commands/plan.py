"""``--dry-run``: what a job command would launch, rendered without launching it (the merged
config, then the launch plan as JSON; for a federated job the round pipeline of both sides and
the privacy settings with the epsilon they reach)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import IO, Any

from orchestrator.config.loader import to_yaml


def print_dry_run(job: Any, plan: Mapping[str, Any], file: IO[str] | None = None) -> None:
    """``--dry-run``: the merged config as YAML, then ``# launch plan`` and the plan as JSON."""
    file = file or sys.stdout
    print(to_yaml(job), end="", file=file)
    print("# launch plan", file=file)
    print(json.dumps(plan, indent=2), file=file)


def round_pipeline(job: Any) -> dict[str, list[str]]:
    """The stages a federated round runs for ``job``, site side and server side (``--dry-run``).

    The CLI is where both sides meet, so it may ask each for its own description.
    """
    from clients.pipeline import describe
    from orchestrator.contract.model import ModelSpec
    from orchestrator.contract.task import SiteTask, site_task
    from strategies import build_strategy

    task = site_task(job, ModelSpec(task=job.task.kind, hf_config={}), None, list(job.task.labels))
    strategy = build_strategy(job)
    server = strategy.pipeline()
    if job.privacy.secure_aggregation:
        from orchestrator.federated.secagg_round import describe as secure

        # The sum replaces the fold; the weights/robustness lines and the server step still hold.
        kept = [line for line in server if line.startswith(("weights:", "robustness:"))]
        sites = job.federation.sampled_sites
        server = [*secure(job.privacy, sites), *kept, server[-2], server[-1]]
    # What the strategy adds to every train message (FedProx's mu, SCAFFOLD's flag) shapes the
    # site's pipeline too.
    record = task.to_record()
    record.update(strategy.extra_train_config())
    return {"site": describe(SiteTask.from_record(record)), "server": server}


def privacy_plan(job: Any) -> dict[str, Any]:
    """The ``privacy`` section of ``--dry-run``: the settings, the sampling the accountant is fed,
    and the epsilon the configured run will reach (so a user can choose the noise)."""
    from orchestrator.federated.ledger import projected_epsilon, rounds_within_budget

    p, fed = job.privacy, job.federation
    out: dict[str, Any] = {
        "mode": p.mode,
        "secure_aggregation": p.secure_aggregation,
    }
    if not p.enabled:
        return out
    k, n, rounds = fed.sampled_sites, fed.num_sites, fed.num_rounds
    eps = projected_epsilon(p, rounds, k, n)
    out.update(
        clip_norm=("adaptive, from " if p.adaptive_clip else "") + f"{p.clip_norm:g}",
        noise_multiplier=p.noise_multiplier,
        delta=p.delta,
        accountant="dp-accounting RDP, replace-one-site, sensitivity 2 x clip",
        sampling=(
            f"{k} of {n} sites per round, uniformly without replacement (amplified by sampling)"
            if p.mode == "central" and k < n
            else f"{k} of {n} sites per round; no amplification"
            + (" (local DP: the server knows who took part)" if p.mode == "local" else "")
        ),
        epsilon_after_all_rounds=eps if eps != float("inf") else "inf",
        rounds=rounds,
    )
    if p.target_epsilon is not None:
        fits = rounds_within_budget(p, rounds, k, n)
        out["target_epsilon"] = p.target_epsilon
        out["rounds_within_budget"] = fits
        if fits < rounds:
            out["note"] = f"the budget stops the run after round {fits} of {rounds}"
    return out


__all__ = ["print_dry_run", "privacy_plan", "round_pipeline"]
