"""Typed configuration of a federated fine-tuning job (``fedray simulate`` / ``fedray server``).

``FederatedJob`` reuses the shared ``model``, ``data``, ``run`` and ``logging`` sections of
:mod:`orchestrator.config.schema` and adds the federated ones: ``task``, ``train`` (a site's
local optimiser, :class:`SiteTrainConfig`: pretraining's step schedule does not apply, so its keys
are refused here instead of silently ignored), ``finetune``, ``strategy``, ``federation``,
``partition`` and ``compression`` (:mod:`orchestrator.config.compression`). Validation style
is the same as schema.py: a :class:`FieldError` in ``__post_init__``; the loader adds the key
path and exits with code 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from orchestrator.config.compression import CompressionConfig
from orchestrator.config.federation import (
    FederationConfig,
    PartitionConfig,
)
from orchestrator.config.model_data import ENCODER_FAMILIES
from orchestrator.config.privacy import PrivacyConfig, check_privacy, resolve_weighting
from orchestrator.config.robust import ROBUST_RULES, check_tolerance
from orchestrator.config.schema import (
    ClusterConfig,
    DataConfig,
    FieldError,
    LoggingConfig,
    ModelConfig,
    RunConfig,
    require,
)

TaskKind = Literal["classification", "causal_lm"]
FinetuneMode = Literal["full", "lora"]
StrategyName = Literal[
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedavgm",
    "scaffold",
    "median",
    "trimmed_mean",
    "krum",
    "multikrum",
    "centered_clip",
]
Weighting = Literal["auto", "examples", "uniform", "capped"]
AttackKind = Literal["none", "sign_flip", "scale", "gaussian", "alie", "ipm", "label_flip"]
Accumulate = Literal["float64", "float32"]
TASKS: tuple[str, ...] = get_args(TaskKind)
STRATEGIES: tuple[str, ...] = get_args(StrategyName)


@dataclass
class SiteTrainConfig:
    """A site's local optimiser (AdamW, fresh each round). Sent to every site with the task."""

    micro_batch_size: int = 8
    """Local batch size (examples per optimizer step at a site)."""
    lr: float = 1e-3
    """Local AdamW learning rate (constant within a round)."""
    weight_decay: float = 0.1
    """Local AdamW weight decay."""
    beta1: float = 0.9
    """Local AdamW first-moment decay."""
    beta2: float = 0.95
    """Local AdamW second-moment decay."""
    grad_clip: float = 1.0
    """Clip each local step's gradient norm to this value; 0 = no clipping."""
    seed: int = 1234
    """Seeds the starting model (server) and each site's data order (shifted per round)."""

    def __post_init__(self) -> None:
        require(self.micro_batch_size >= 1, self, "micro_batch_size", "an integer >= 1")
        require(self.lr > 0, self, "lr", "a float > 0")
        require(self.weight_decay >= 0, self, "weight_decay", "a float >= 0")
        require(0 <= self.beta1 < 1, self, "beta1", "a float in [0, 1)")
        require(0 <= self.beta2 < 1, self, "beta2", "a float in [0, 1)")
        require(self.grad_clip >= 0, self, "grad_clip", "a float >= 0 (0 = no clipping)")


@dataclass
class TaskConfig:
    """What the sites fine-tune the model for."""

    kind: TaskKind = "classification"
    """``classification`` (sequence classification: accuracy, macro-F1) or ``causal_lm``
    (next-token loss, perplexity)."""
    labels: list[str] = field(default_factory=list)
    """Class names, in label-id order (classification). Empty = the sorted distinct values of
    ``data.label_field`` in the data the server can read (the demo data or ``data.paths``).
    Real sites must all use these names; a site row with an unknown label is an error."""
    max_length: int = 64
    """Tokens per example; longer texts are truncated, shorter ones padded."""

    def __post_init__(self) -> None:
        require(self.kind in TASKS, self, "kind", "'classification' or 'causal_lm'")
        require(self.max_length >= 4, self, "max_length", "an integer >= 4")
        if self.labels:
            require(
                len(set(self.labels)) == len(self.labels) and len(self.labels) >= 2,
                self,
                "labels",
                "at least 2 distinct class names (or [] to read them from the data)",
            )


@dataclass
class FinetuneConfig:
    """How each site trains in a round: full fine-tuning or LoRA adapters (peft)."""

    mode: FinetuneMode = "full"
    """``full`` (every parameter trains; the update is the delta of all of them) or ``lora``
    (the base is frozen; the update holds only the adapters and, for classification, the head)."""
    local_epochs: int = 1
    """Passes over the site's training split per round (ignored when ``local_steps`` is set)."""
    local_steps: int | None = None
    """Optimizer steps per round (cycling through the site's data); ``None`` = use epochs."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by ``alpha / r``)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch."""
    lora_target_modules: list[str] = field(default_factory=list)
    """Module names that get adapters. Empty = by architecture: gpt2 ``c_attn``, llama
    ``q_proj``/``v_proj``, bert ``query``/``key``/``value``/``dense`` (the encoder layers; a
    classifier's pooler trains in full with the head)."""

    def __post_init__(self) -> None:
        require(self.mode in ("full", "lora"), self, "mode", "'full' or 'lora'")
        require(self.local_epochs >= 1, self, "local_epochs", "an integer >= 1")
        if self.local_steps is not None:
            require(self.local_steps >= 1, self, "local_steps", "an integer >= 1 or null")
        require(self.lora_r >= 1, self, "lora_r", "an integer >= 1")
        require(self.lora_alpha >= 1, self, "lora_alpha", "an integer >= 1")
        require(0.0 <= self.lora_dropout < 1.0, self, "lora_dropout", "a float in [0, 1)")


@dataclass
class StrategyConfig:
    """Server-side aggregation (see docs/federated.md, "Strategies")."""

    name: StrategyName = "fedavg"
    """``fedavg`` | ``fedprox`` (FedAvg + proximal term at the sites) | ``fedadam`` |
    ``fedyogi`` | ``fedadagrad`` (server optimizer on the averaged update) | ``fedavgm``
    (FedAvg + server momentum, Hsu et al. 2019) | ``scaffold`` (control variates against
    client drift on non-IID data, Karimireddy et al. 2020; sites keep state across rounds) |
    robust rules:
    ``median`` (coordinate-wise), ``trimmed_mean``, ``krum``, ``multikrum``, ``centered_clip``
    (docs/federated.md, "Robustness and threat model")."""
    weighting: Weighting = "auto"
    """How replies are weighted: ``auto`` (``uniform`` under differential privacy or secure
    aggregation, which need it, else ``examples``; ``--dry-run`` shows the choice), ``examples``
    (by the ``num-examples`` a site reports), ``uniform`` (every accepted reply counts the same),
    ``capped`` (by examples, but at most ``weight_cap`` x the round's median: one site cannot
    outweigh the rest by claiming 1e9 rows). An explicit ``examples`` or ``capped`` with
    ``privacy.mode`` on or secure aggregation is an error."""
    weight_cap: float = 3.0
    """``capped`` weighting: a site's weight is at most this multiple of the round's median."""
    clip_update_norm: float = 0.0
    """Bound each update's L2 norm (over all tensors) before aggregation, with any strategy;
    0 = off. See ``clip_relative``."""
    clip_relative: bool = False
    """``clip_update_norm`` is a multiple of the round's median update norm (e.g. 2.0) instead
    of an absolute norm."""
    num_byzantine: int | None = None
    """Attackers among the sites sampled per round (K) that the rule must tolerate, a count
    (``null`` = 1 with a robust rule, 0 otherwise). It sets every rule's tolerance:
    ``trimmed_mean`` drops this many values per side of each coordinate, ``krum`` /
    ``multikrum`` use it as f (needs K > 2f + 2), ``median`` / ``centered_clip`` need an honest
    majority (K > 2f); a weighted mean (fedavg & co.) tolerates 0. A rule that cannot meet it
    with K sites is a config error; ``--dry-run`` states what the rule tolerates of K
    (orchestrator/config/robust.py, docs/federated.md "Robustness and threat model")."""
    trim_fraction: float | None = None
    """``trimmed_mean`` only, optional: trim more than ``num_byzantine``, ``floor(trim_fraction x
    K)`` values per side (at least ``num_byzantine``: a smaller value is an error). ``null`` =
    trim exactly ``num_byzantine`` per side."""
    num_selected: int | None = None
    """``multikrum``: replies averaged after selection (<= K - num_byzantine); ``None`` = the
    replies received - num_byzantine."""
    clip_radius: float = 1.0
    """``centered_clip``: radius tau around the running center (in update L2 norm)."""
    clip_iters: int = 3
    """``centered_clip``: clipping iterations per round (the paper uses 1-3)."""
    proximal_mu: float = 0.01
    """FedProx: sites add ``mu/2 * ||w - w_global||^2`` to their loss (only with ``fedprox``)."""
    server_lr: float | None = None
    """Server learning rate (eta) applied to the averaged update. ``None`` = 1.0 for
    fedavg/fedprox (plain averaging) and 0.01 for the adaptive optimizers."""
    server_momentum: float = 0.9
    """FedAvgM: the server momentum beta, ``v <- beta v + mean update; w <- w + eta v`` (0 = FedAvg;
    only with ``fedavgm``)."""
    beta1: float = 0.9
    """First-moment decay of fedadam/fedyogi (fedadagrad uses it too, as in Reddi et al. 2021)."""
    beta2: float = 0.99
    """Second-moment decay of fedadam/fedyogi."""
    tau: float = 1e-3
    """Adaptivity (epsilon) of the adaptive optimizers: ``eta * m / (sqrt(v) + tau)``."""
    accumulate: Accumulate = "float64"
    """Precision of the server's running sum of updates. ``float64``: the aggregate is the same
    bits whatever order the sites' replies arrive in, so reruns and resumed runs reproduce the
    same model. ``float32``: half the server memory for the sum (one model size instead of two)
    and faster folding, but the last bit of the mean depends on the arrival order."""

    def __post_init__(self) -> None:
        require(self.name in STRATEGIES, self, "name", " | ".join(STRATEGIES))
        require(self.proximal_mu >= 0, self, "proximal_mu", "a float >= 0")
        if self.server_lr is not None:
            require(self.server_lr > 0, self, "server_lr", "a float > 0 or null")
        require(0 <= self.beta1 < 1, self, "beta1", "a float in [0, 1)")
        require(0 <= self.beta2 < 1, self, "beta2", "a float in [0, 1)")
        require(self.tau > 0, self, "tau", "a float > 0")
        require(0 <= self.server_momentum < 1, self, "server_momentum", "a float in [0, 1)")
        if self.name == "scaffold":
            # delta_c is folded with the replies' own weights, next to the streamed mean.
            require(
                self.weighting != "capped" and not self.clip_relative,
                self,
                "weighting" if self.weighting == "capped" else "clip_relative",
                "'examples' or 'uniform' weighting and an absolute clip_update_norm with scaffold",
                "SCAFFOLD keeps its control variates consistent only under a streamed weighted "
                "mean; use strategy.weighting=examples|uniform and clip_relative=false.",
            )
        require(self.accumulate in ("float64", "float32"), self, "accumulate", "float64 | float32")
        require(self.weight_cap >= 1, self, "weight_cap", "a float >= 1")
        require(self.clip_update_norm >= 0, self, "clip_update_norm", "a float >= 0 (0 = off)")
        if self.trim_fraction is not None:
            require(
                0 <= self.trim_fraction < 0.5, self, "trim_fraction", "a float in [0, 0.5) or null"
            )
        if self.num_byzantine is not None:
            require(self.num_byzantine >= 0, self, "num_byzantine", "an integer >= 0 or null")
        if self.num_selected is not None:
            require(self.num_selected >= 1, self, "num_selected", "an integer >= 1 or null")
        require(self.clip_radius > 0, self, "clip_radius", "a float > 0")
        require(self.clip_iters >= 1, self, "clip_iters", "an integer >= 1")

    @property
    def robust(self) -> bool:
        """A robust rule (median, Krum, ...): not a weighted sum of the updates."""
        return self.name in ROBUST_RULES

    @property
    def eta(self) -> float:
        if self.server_lr is not None:
            return self.server_lr
        return 0.01 if self.name in ("fedadam", "fedyogi", "fedadagrad") else 1.0


@dataclass
class AttackConfig:
    """Simulated attackers (``fedray simulate`` only; real sites refuse it). The attack runs at
    the site, so the server sees exactly what a malicious site would send."""

    kind: AttackKind = "none"
    """``none`` | ``sign_flip`` (-scale x update) | ``scale`` (scale x update) | ``gaussian``
    (noise of std ``scale``) | ``alie`` (Baruch et al. 2019) | ``ipm`` (Xie et al. 2020,
    epsilon = ``scale``) | ``label_flip`` (class i -> C-1-i before local training)."""
    fraction: float = 0.2
    """Share of the federation's sites that attack, chosen reproducibly from
    ``federation.seed`` (ignored when ``sites`` is given)."""
    sites: list[int] = field(default_factory=list)
    """Explicit attacking site ids (0-based, as ``site-<id>``); empty = use ``fraction``."""
    scale: float = 1.0
    """Strength: the factor of ``scale``/``sign_flip``, the std of ``gaussian``, IPM's epsilon."""

    def __post_init__(self) -> None:
        require(0 <= self.fraction < 1, self, "fraction", "a float in [0, 1)")
        require(len(set(self.sites)) == len(self.sites), self, "sites", "distinct site ids")
        require(all(s >= 0 for s in self.sites), self, "sites", "site ids >= 0")
        require(math.isfinite(self.scale), self, "scale", "a finite float")


@dataclass
class FederatedJob:
    """A federated fine-tuning job: ``fedray simulate`` (sites on Ray) or ``fedray server``."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: SiteTrainConfig = field(default_factory=SiteTrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """``cluster.address`` runs ``fedray simulate`` (and ``fedray tune``'s trials) on that Ray
    cluster instead of an embedded local Ray. ``cluster.num_cpus`` sizes ``fedray tune``'s
    embedded Ray; ``fedray simulate`` refuses it (its embedded Ray takes federation.num_cpus)."""
    run: RunConfig = field(default_factory=RunConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        check_task_model(self.task, self.model)
        if len(self.data.paths) > 1:
            raise FieldError(
                self.data,
                "paths",
                self.data.paths,
                "at most one labelled file (csv/jsonl/parquet) to partition into sites",
                "Concatenate the files, or give each real site its own file (`fedray site --data`).",
            )
        a, n = self.attack, self.federation.num_sites
        if a.sites and max(a.sites) >= n:
            raise FieldError(a, "sites", a.sites, f"site ids in [0, federation.num_sites={n})")
        s = self.strategy
        check_tolerance(s, self.federation.sampled_sites)
        if s.name == "scaffold" and (self.privacy.enabled or self.privacy.secure_aggregation):
            # delta_c is computed from the site's data and would leave it unclipped, unnoised and
            # unmasked: the privacy guarantee would not hold.
            raise FieldError(
                s,
                "name",
                s.name,
                "a strategy other than scaffold with privacy.mode != off or secure aggregation",
                "SCAFFOLD's control-variate updates are not covered by DP or secure aggregation; "
                "use fedavgm (server-side only) for drift, or turn privacy off.",
            )
        f = self.federation
        if (
            f.simulation_nodes is not None
            and f.simulation_nodes < n
            and self.privacy.secure_aggregation
        ):
            raise FieldError(
                f,
                "simulation_nodes",
                f.simulation_nodes,
                f"null or federation.num_sites={n} with privacy.secure_aggregation (its four "
                "exchanges keep per-node state)",
                "Set federation.simulation_nodes=null.",
            )
        check_privacy(self.privacy, self.strategy, self.federation)
        if self.compression.kind != "none" and self.privacy.secure_aggregation:
            raise FieldError(
                self.compression,
                "kind",
                self.compression.kind,
                "none with privacy.secure_aggregation (masks are added to float32 updates)",
                "Turn one of them off.",
            )

    @property
    def weighting(self) -> str:
        """``strategy.weighting`` with ``auto`` resolved: uniform under DP or secure
        aggregation, examples otherwise."""
        return resolve_weighting(self.strategy.weighting, self.privacy)


def check_task_model(task: TaskConfig, model: ModelConfig) -> None:
    """An encoder built from ``model.family`` has no next-token head (a ``model.path`` is
    checked against its config.json before round 0)."""
    if task.kind == "causal_lm" and model.family in ENCODER_FAMILIES and not model.path:
        raise FieldError(
            task,
            "kind",
            task.kind,
            f"'classification' with model.family={model.family} (an encoder has no next-token "
            "head)",
            "Set task.kind=classification, or model.family=gpt2 or llama.",
        )
