"""Which sites a round talks to: waiting for the federation, seeded sampling, and (in
simulation) routing sampled sites onto a pool of SuperNodes; the messages each target gets.

A mixin of :class:`strategies.base.DeltaStrategy`, kept apart because it is about *who* takes part,
not about aggregation. :meth:`SiteSampler.init_sampling` sets the strategy's ``min_sites``,
``min_available_sites``, ``wait_for_sites_s``, ``rejoin_wait_s``, ``sites_per_round``,
``fraction``, ``seed`` and ``rng`` (the training sampler, checkpointed) from a :class:`Sampling`,
and the mixin keeps ``population`` (site pool size, None = one node per site), ``assigned`` (pool
node -> site name this round), ``num_nodes`` and ``_federation_seen``.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from orchestrator.contract.site_pool import site_record
from strategies.downlink import Downlink
from strategies.validation import site_name

if TYPE_CHECKING:
    from orchestrator.config.federated import FederatedJob


@dataclass(frozen=True)
class Sampling:
    """Which sites a round samples and how long it waits for them (``federation.*``)."""

    sites_per_round: int | None = None
    """Sites sampled per train round; None = ``fraction`` of the connected sites."""
    fraction: float = 1.0
    min_sites: int = 1
    """Fewest accepted replies that update the model (and connected sites to go on with)."""
    min_available_sites: int = 1
    """Sites to wait for before the first round (at least ``min_sites``)."""
    seed: int = 0
    """Seeds the training sampler (checkpointed) and each round's evaluation sample."""
    wait_for_sites_s: float = 600.0
    rejoin_wait_s: float = 0.0

    @classmethod
    def from_config(cls, job: FederatedJob) -> Sampling:
        f = job.federation
        return cls(
            sites_per_round=f.sites_per_round,
            fraction=f.fraction,
            min_sites=f.min_sites,
            min_available_sites=f.sampled_sites,
            # Under DP the sample must be secret (amplification by sampling assumes nobody can
            # predict it), so it is drawn from OS entropy; the checkpoint keeps the RNG for resume.
            seed=secrets.randbits(64) if job.privacy.enabled else f.seed,
            wait_for_sites_s=f.round_timeout_s,
            rejoin_wait_s=f.rejoin_wait_s,
        )


class SiteSampler:
    """Sampling and routing of a strategy's sites (see the module doc)."""

    min_sites: int
    min_available_sites: int
    wait_for_sites_s: float
    rejoin_wait_s: float
    sites_per_round: int | None
    fraction: float
    seed: int
    rng: random.Random
    population: int | None
    assigned: dict[int, str]
    _federation_seen: bool
    suspects: set[int]
    num_nodes: int
    downlink: Downlink
    update_keys: set[str] | None
    arrayrecord_key: str
    configrecord_key: str

    def init_sampling(self, s: Sampling) -> None:
        self.sites_per_round = s.sites_per_round
        self.fraction = s.fraction
        self.min_sites = s.min_sites
        self.min_available_sites = max(s.min_available_sites, s.min_sites)
        self.seed = s.seed
        self.rng = random.Random(s.seed)
        self.wait_for_sites_s = s.wait_for_sites_s
        self.rejoin_wait_s = s.rejoin_wait_s
        self._federation_seen = False
        self.suspects = set()
        """Nodes that sent no reply in the last train round (:meth:`note_dropped`)."""
        self.num_nodes = 0
        """Sites in the federation when the last train round was configured (connected nodes;
        with a site pool, the population)."""
        self.population = None
        """Set by :meth:`use_site_pool`: sites ``0..population-1`` take turns on the grid's
        nodes (a simulation pool); None = every node is one site."""
        self.assigned = {}
        """With a site pool: node id -> the site its message in flight is for."""

    def use_site_pool(self, num_sites: int) -> None:
        """Sample SITE ids ``0..num_sites-1`` (with the same RNG draws as sampling as many
        nodes) and send each sampled site's message to a distinct node of the grid, naming the
        site in a ``sim-site`` record (orchestrator/contract/site_pool.py). Simulation only."""
        self.population = num_sites

    def note_dropped(self, nodes: Iterable[int]) -> None:
        """The nodes that sent no reply in the train round just done. A site that crashed keeps
        its old node listed as online until the SuperLink misses its heartbeats (about a
        minute), while its restart is refused: during the rejoin grace period these nodes do
        not count as connected, so the next round waits for the restarted site's new node
        instead of sending to the dead one. Once the grace period is over they count again (a
        straggler that only timed out is alive)."""
        self.suspects = set(nodes)

    def sample(self, grid: Grid, k: int | None, rng: random.Random | None = None) -> list[int]:
        """Wait for enough connected sites, then draw ``k`` of them (all when ``k`` is None)
        with ``rng`` (default: the training sampler, whose state is checkpointed)."""
        return self.draw(grid, k, rng)[0]

    def draw(
        self, grid: Grid, k: int | None, rng: random.Random | None = None
    ) -> tuple[list[int], int]:
        """:meth:`sample`, and the number of sites it drew from (the accountant's population)."""
        # The first sampling waits for the whole expected federation; later ones go on with
        # whoever is connected as long as min_sites are (real sites drop out and come back).
        need = self.min_sites if self._federation_seen else self.min_available_sites
        start = time.monotonic()
        deadline = start + self.wait_for_sites_s
        # Later rounds first give a crashed-and-restarted site a short grace period to rejoin.
        grace_until = start + self.rejoin_wait_s if self._federation_seen else start
        while True:
            in_grace = time.monotonic() < grace_until
            nodes = sorted(n for n in grid.get_node_ids() if not in_grace or n not in self.suspects)
            if len(nodes) >= need and not (in_grace and len(nodes) < self.min_available_sites):
                break
            # wait_for_sites_s bounds the wait for min_sites; the rejoin grace has its own end.
            if len(nodes) < need and time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(nodes)} site(s) connected after {self.wait_for_sites_s:.0f} s; "
                    f"need {need}"
                )
            time.sleep(1.0)
        self._federation_seen = True
        # A pool draws site ids: the same positions as drawing from as many sorted node ids.
        sites = nodes if self.population is None else list(range(self.population))
        if k is None:
            return sites, len(sites)
        # Sorted first: the seeded RNG then picks the same positions in every run.
        return (rng or self.rng).sample(sites, min(k, len(sites))), len(sites)

    def _train_sample_size(self, n_nodes: int) -> int:
        if self.sites_per_round is not None:
            return self.sites_per_round
        return max(self.min_sites, int(n_nodes * self.fraction))

    def route(
        self, targets: list[int], grid: Grid
    ) -> tuple[list[int], dict[int, ConfigRecord] | None]:
        """The nodes to send to, and with a site pool each node's ``sim-site`` record: the
        i-th site goes to the i-th node (sorted), so no node gets two messages at once."""
        if self.population is None:
            return targets, None
        pool = sorted(grid.get_node_ids())
        if len(targets) > len(pool):
            raise RuntimeError(
                f"{len(targets)} sites at once on a pool of {len(pool)} simulation nodes "
                "(send in waves of the pool, or raise federation.simulation_nodes)"
            )
        nodes = pool[: len(targets)]
        self.assigned = {n: f"site-{t}" for n, t in zip(nodes, targets, strict=True)}
        records = {n: site_record(t, self.population) for n, t in zip(nodes, targets, strict=True)}
        return nodes, records

    def _messages(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        targets: list[int],
        kind: str,
        grid: Grid,
        extra: dict[str, ArrayRecord] | None = None,
    ) -> list[Message]:
        """One message per target (a node id, or with a site pool a site id routed to a node),
        built by the strategy's downlink."""
        keys = (self.arrayrecord_key, self.configrecord_key)
        nodes, records = self.route(targets, grid)
        return self.downlink.messages(
            arrays, config, self.update_keys, nodes, kind, keys, extra, records
        )

    def _assignment(self) -> dict[int, str]:
        """The pool's node -> site map of the messages just built ({} without a pool)."""
        return dict(self.assigned) if self.population is not None else {}

    def site_of(self, msg: Message) -> str:
        """A reply's site name: with a site pool the site its node was sent (the server's own
        assignment, also for error replies), else the name the site reports."""
        if self.population is not None and msg.metadata.src_node_id in self.assigned:
            return self.assigned[msg.metadata.src_node_id]
        return site_name(msg)

    def sample_evaluate(self, server_round: int, grid: Grid, num_sites: int | None) -> list[int]:
        """The nodes (site pool: the sites) that evaluate after ``server_round``."""
        # Its own RNG, a function of (seed, round): sampling evaluation never shifts the training
        # sample, and a resumed run evaluates the same sites with no extra checkpointed state.
        rng = random.Random(f"{self.seed}-evaluate-{server_round}")
        return self.sample(grid, num_sites, rng)
