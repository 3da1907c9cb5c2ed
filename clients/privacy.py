"""Local differential privacy at the site (``privacy.mode=local``): clip, then noise, before the
update leaves. The site trusts no server: what it sends is already private.

The math is :func:`orchestrator.contract.privacy.privatize_update` (clip to C, add N(0, (z C)^2) per
coordinate); the noise comes from the OS's entropy, so nobody (not the server, not whoever wrote
the config) can predict or remove it. The epsilon a site spends is reported by the server's ledger
(``Gaussian(z/2)`` per round the site takes part in; docs/privacy.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.contract.privacy import privatize_update, secure_rng
from orchestrator.contract.task import SiteTask

if TYPE_CHECKING:
    from clients.stages import Arrays, SiteContext

log = logging.getLogger(__name__)


class LocalDPStage:
    """Update stage: clip the update to ``privacy.clip_norm`` and add Gaussian noise of std
    ``privacy.noise_multiplier x clip_norm``. ``rng``: tests inject a seeded one."""

    def __init__(self, task: SiteTask, rng: np.random.Generator | None = None) -> None:
        p = task.privacy
        self.clip, self.std = p.clip_norm, p.noise_multiplier * p.clip_norm
        self.rng = rng or secure_rng()
        self.name = (
            f"local DP: clip L2 norm to {self.clip:g}, add N(0, {self.std:g}^2) per coordinate"
        )

    def __call__(self, update: Arrays, ctx: SiteContext) -> Arrays:
        private, norm = privatize_update(update, self.clip, self.std, self.rng)
        # The norm stays in the site's own log: sending it would leak what the noise hides.
        log.info("local DP: update norm %.4g, clip %g, noise std %g", norm, self.clip, self.std)
        return private
