"""Typed ``federation`` and ``partition`` sections of a federated job: who takes part, how
often, on which resources, and how one labelled file is cut into simulated sites. Part of
:class:`orchestrator.config.federated.FederatedJob` (which re-exports these names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from orchestrator.config.schema import require

PartitionKind = Literal["natural", "dirichlet", "iid"]
PARTITIONS: tuple[str, ...] = get_args(PartitionKind)


POOL_AUTO_ABOVE = 1000
"""``federation.simulation_nodes: null`` pools the simulated sites above this many (one
SuperNode per site up to it: Flower's engine polls every node, a cost that grows with them;
BENCHMARKS.md, "Population")."""
POOL_AUTO_SIZE = 100
"""The smallest automatic pool: a final evaluation of every site runs in waves of the pool."""


@dataclass
class FederationConfig:
    """Sites, rounds, sampling and per-site resources."""

    num_sites: int = 4
    """Simulated sites (SuperNodes); each gets one data partition."""
    num_rounds: int = 3
    """Federated rounds (each: sample sites, local training, aggregate, evaluate)."""
    sites_per_round: int | None = None
    """Sites sampled for training per round; ``None`` = ``fraction`` x available sites."""
    fraction: float = 1.0
    """Fraction of available sites sampled per round when ``sites_per_round`` is null."""
    min_sites: int = 1
    """Accepted replies needed to update the model in a round; fewer = the round is skipped
    (logged), the global model stays as it was."""
    round_timeout_s: float = 600.0
    """Seconds to wait for replies in a round; late replies are dropped."""
    rejoin_wait_s: float = 30.0
    """After the first round, how long a round waits for the whole federation to be connected
    before it goes on with the sites that are (at least ``min_sites``). Lets a site that crashed
    and restarted rejoin at the next round; 0 = never wait. Costs nothing when all are online."""
    cpus_per_site: float = 1.0
    """CPU cores reserved per simulated site (Ray actor resources)."""
    gpus_per_site: float = 0.0
    """GPUs (fraction allowed) per simulated site; 0 = CPU only."""
    num_cpus: int | None = None
    """CPUs given to the embedded Ray of a simulation; ``None`` = all cores of this machine."""
    seed: int = 0
    """Seeds site sampling and data partitioning (same seed = same sites, same partitions)."""
    eval_sites_per_round: int | None = None
    """Sites that evaluate the global model in an evaluation round, sampled (reproducibly, from
    ``seed`` and the round) like training; ``None`` = every site. With a large population this
    keeps a round's cost independent of how many sites exist."""
    eval_every: int = 1
    """Evaluate after every N-th round (and before round 1); rounds in between record training
    only. The last round always evaluates."""
    final_eval_all: bool = True
    """After the last round, evaluate at every site (the final per-site table) whatever
    ``eval_sites_per_round`` says; false = the last round samples like the others (for
    simulated populations too large to visit every site)."""
    simulation_nodes: int | None = None
    """``fedray simulate`` only: SuperNodes the simulation engine runs. ``None`` = one per site
    up to :data:`POOL_AUTO_ABOVE` sites, a pool of ``max(100, sites sampled per round,
    eval_sites_per_round, min_sites)`` above; fewer than ``num_sites`` = a pool: each message
    names the site it is for and the sampled sites take turns on the pool's nodes (same samples,
    same results as one node per site; docs/federated.md, "Large populations")."""

    def __post_init__(self) -> None:
        require(self.num_sites >= 1, self, "num_sites", "an integer >= 1")
        require(self.num_rounds >= 1, self, "num_rounds", "an integer >= 1")
        if self.sites_per_round is not None:
            require(
                1 <= self.sites_per_round <= self.num_sites,
                self,
                "sites_per_round",
                f"an integer in [1, federation.num_sites={self.num_sites}] or null",
            )
        require(0.0 < self.fraction <= 1.0, self, "fraction", "a float in (0, 1]")
        if self.eval_sites_per_round is not None:
            require(
                1 <= self.eval_sites_per_round <= self.num_sites,
                self,
                "eval_sites_per_round",
                f"an integer in [1, federation.num_sites={self.num_sites}] or null (every site)",
            )
        require(self.eval_every >= 1, self, "eval_every", "an integer >= 1")
        require(
            1 <= self.min_sites <= self.sampled_sites,
            self,
            "min_sites",
            f"an integer in [1, sites sampled per round = {self.sampled_sites}]",
            "Lower federation.min_sites or sample more sites per round.",
        )
        require(self.round_timeout_s > 0, self, "round_timeout_s", "a float > 0")
        require(self.rejoin_wait_s >= 0, self, "rejoin_wait_s", "a float >= 0")
        require(self.cpus_per_site > 0, self, "cpus_per_site", "a float > 0")
        require(self.gpus_per_site >= 0, self, "gpus_per_site", "a float >= 0")
        if self.num_cpus is not None:
            require(self.num_cpus >= 1, self, "num_cpus", "an integer >= 1 or null")
        if self.simulation_nodes is not None:
            low = self.pool_minimum
            require(
                low <= self.simulation_nodes <= self.num_sites,
                self,
                "simulation_nodes",
                f"null (auto) or an integer in [{low}, federation.num_sites={self.num_sites}]",
                "A pool needs a node for every site a round sends to at once (sites_per_round, "
                "eval_sites_per_round, min_sites).",
            )

    @property
    def pool_minimum(self) -> int:
        """The fewest simulation nodes a round can run on (one per site it sends to at once)."""
        return max(self.sampled_sites, self.eval_sites_per_round or 1, self.min_sites)

    def simulation_pool(self, secure_aggregation: bool = False) -> int | None:
        """The pool size ``fedray simulate`` runs (``None`` = one SuperNode per site)."""
        if self.simulation_nodes is None:
            if self.num_sites <= POOL_AUTO_ABOVE or secure_aggregation:
                return None
            return min(self.num_sites, max(POOL_AUTO_SIZE, self.pool_minimum))
        return self.simulation_nodes if self.simulation_nodes < self.num_sites else None

    @property
    def sampled_sites(self) -> int:
        if self.sites_per_round is not None:
            return self.sites_per_round
        return max(1, int(self.num_sites * self.fraction))

    def evaluates(self, server_round: int) -> bool:
        """Does ``server_round`` (0 = the starting model) end with an evaluation?"""
        return server_round % self.eval_every == 0 or server_round == self.num_rounds

    def eval_sites(self, server_round: int) -> int | None:
        """Sites that evaluate after ``server_round`` (``None`` = all of them)."""
        if server_round == self.num_rounds and self.final_eval_all:
            return None
        return self.eval_sites_per_round


@dataclass
class PartitionConfig:
    """How one labelled dataset is split into simulated sites (real sites bring their own file)."""

    kind: PartitionKind = "natural"
    """``natural`` (one site per value of ``column``, values grouped when there are more values
    than sites), ``dirichlet`` (label mix per site ~ Dirichlet(alpha)) or ``iid``."""
    column: str = "topic"
    """Column that defines natural sites (the demo tweets have ``topic``)."""
    alpha: float = 0.5
    """Dirichlet concentration: small (0.1) = very skewed label mixes, large (100) = near IID."""
    eval_fraction: float = 0.2
    """Fraction of each site's examples held out for its local evaluation."""
    max_examples_per_site: int | None = None
    """Cap on a site's examples (after partitioning), to bound demo/test time; ``None`` = all."""

    def __post_init__(self) -> None:
        require(self.kind in PARTITIONS, self, "kind", "'natural', 'dirichlet' or 'iid'")
        require(bool(self.column), self, "column", "a column name")
        require(self.alpha > 0, self, "alpha", "a float > 0")
        require(0.0 < self.eval_fraction < 1.0, self, "eval_fraction", "a float in (0, 1)")
        if self.max_examples_per_site is not None:
            require(
                self.max_examples_per_site >= 2,
                self,
                "max_examples_per_site",
                "an integer >= 2 or null",
            )
