"""Simulated attackers' math: what a malicious site replies instead of its honest update.

For robustness experiments in **simulation only**. A site's update is
``{name: w_local - w_global}`` (float arrays); every function here is pure numpy: it never
mutates its inputs and returns arrays of the input dtypes (float32 in, float32 out; statistics
are taken in float64 and cast back).

- :func:`select_attackers` -- which site ids are malicious (from ``orchestrator.contract``).
- :func:`sign_flip`, :func:`scale_attack`, :func:`gaussian` -- simple Byzantine replies.
- :func:`alie` -- "A Little Is Enough" (Baruch et al., NeurIPS 2019).
- :func:`ipm` -- Inner Product Manipulation (Xie et al., UAI 2020).
- :func:`flip_labels` -- label flipping, a data attack applied before local training.
- :func:`attack_update` -- one dispatch over the kinds in :data:`ATTACK_KINDS`.

Notation: ``n`` = sites in the federation (``federation.num_sites``), ``f`` = attackers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

Update = Mapping[str, np.ndarray]
"""A site's weight update: tensor name -> ``w_local - w_global``."""

ATTACK_KINDS = ("none", "sign_flip", "scale", "gaussian", "alie", "ipm", "label_flip")
"""Valid ``attack.kind`` values. ``label_flip`` acts on the site's data (:func:`flip_labels`),
so :func:`attack_update` leaves its update unchanged."""


# --------------------------------------------------------------------------------------------
# Who attacks


def _finite(value: float, key: str = "attack.scale") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{key}: got {value!r}; allowed: a finite number")
    if not math.isfinite(value):
        raise ValueError(f"{key}: got {value!r}; allowed: a finite number")
    return float(value)


def _times(update: Update, factor: float) -> dict[str, np.ndarray]:
    # ``astype`` keeps float32 float32 even when ``factor`` is a numpy float64 scalar.
    return {
        k: (np.asarray(v) * factor).astype(np.asarray(v).dtype, copy=False)
        for k, v in update.items()
    }


def sign_flip(update: Update, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Sign flipping: ``malicious = -scale * update``.

    The reply points against the site's honest descent direction (the "sign-flipping" Byzantine
    worker of e.g. Li et al., "RSA", AAAI 2019, and Karimireddy et al., ICLR 2022).
    """
    return _times(update, -_finite(scale))


def scale_attack(update: Update, scale: float) -> dict[str, np.ndarray]:
    """Scaling (boosting): ``malicious = scale * update``, e.g. ``scale = 100``.

    A large factor lets one site dominate a plain mean (the boosting of Bhagoji et al.,
    ICML 2019, and the model replacement of Bagdasaryan et al., AISTATS 2020).
    """
    return _times(update, _finite(scale))


def gaussian(update: Update, scale: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gaussian noise: each entry replaced by an independent draw from ``N(0, scale^2)``.

    Same names, shapes and dtypes as ``update``; its values are ignored (the Gaussian Byzantine
    worker of Blanchard et al., "Krum", NeurIPS 2017). ``rng`` makes a run reproducible.
    """
    std = _finite(scale)
    if std < 0:
        raise ValueError(f"attack.scale: got {scale!r}; allowed: a float >= 0 (the noise std)")
    out = {}
    for k, v in update.items():
        arr = np.asarray(v)
        out[k] = rng.normal(0.0, std, size=arr.shape).astype(arr.dtype, copy=False)
    return out


# --------------------------------------------------------------------------------------------
# Colluding attacks: built from the benign updates the attackers can see


def _check_benign(benign: Sequence[Update]) -> list[Update]:
    benign = list(benign)
    if not benign:
        raise ValueError("benign: got no updates; allowed: at least one benign update")
    first = benign[0]
    for i, b in enumerate(benign[1:], start=1):
        if set(b) != set(first):
            raise ValueError(
                f"benign[{i}]: tensor names {sorted(b)} differ from benign[0]'s {sorted(first)}"
            )
        for k in first:
            if np.shape(b[k]) != np.shape(first[k]):
                raise ValueError(
                    f"benign[{i}][{k!r}]: shape {np.shape(b[k])} differs from benign[0]'s "
                    f"{np.shape(first[k])}"
                )
    return benign


def _mean(benign: Sequence[Update], key: str) -> np.ndarray:
    total = np.zeros(np.shape(benign[0][key]), dtype=np.float64)
    for b in benign:
        total += b[key]
    return total / len(benign)


def alie_z_max(num_sites: int, num_attackers: int) -> float:
    """ALIE's deviation in standard deviations (Baruch et al., NeurIPS 2019, Algorithm 1).

    ``s = floor(n/2 + 1) - f`` benign sites must "support" the attackers for them to hold a
    majority; ``z_max = Phi^{-1}((n - s) / n)``, the largest z such that the normal CDF stays
    below ``(n - s)/n``, i.e. the attackers' value still looks closer to the mean than ``s``
    benign sites do. Examples with f = 20% of n: n=5, f=1: s=2, z=Phi^{-1}(0.6)=0.2533;
    n=10, f=2: s=4, z=Phi^{-1}(0.6)=0.2533; n=20, f=4: s=7, z=Phi^{-1}(0.65)=0.3853.

    The paper's formula is used as is: for f = 0 the ratio is below 1/2 and z is negative, and
    n=2, f=1 gives z = 0 (the reply is the benign mean). (Some re-implementations, e.g.
    Karimireddy et al.'s bucketing code, use ``(n - f - s)/(n - f)`` instead; not this one.)

    Raises ``ValueError`` where ``Phi^{-1}`` is undefined rather than clamping: ``(n - s)/n >= 1``
    means ``s <= 0``, the attackers already are a majority (``f >= floor(n/2) + 1``) and need no
    stealth (use sign_flip/scale instead); ``(n - s)/n <= 0`` happens only for n = 1, f = 0.
    """
    n, f = num_sites, num_attackers
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"federation.num_sites: got {n!r}; allowed: an integer >= 1")
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or not 0 <= f <= n:
        raise ValueError(f"num_attackers: got {f!r}; allowed: an integer in [0, {n}]")
    s = n // 2 + 1 - f  # floor(n/2 + 1) - f, exact for integers
    p = (n - s) / n
    if p >= 1.0:
        raise ValueError(
            f"attack.fraction: ALIE with {f} attackers of {n} sites needs s = floor(n/2 + 1) - f "
            f"= {s} benign supporters; allowed: fewer than floor(n/2) + 1 = {n // 2 + 1} "
            "attackers (a majority needs no stealth: use sign_flip or scale)"
        )
    if p <= 0.0:
        raise ValueError(
            f"federation.num_sites: ALIE is undefined for n={n}, f={f} "
            f"((n - s)/n = {p}); allowed: at least 2 sites"
        )
    return NormalDist().inv_cdf(p)


def alie(benign: Sequence[Update], num_sites: int, num_attackers: int) -> dict[str, np.ndarray]:
    """ "A Little Is Enough" (Baruch, Baruch, Goldberg, NeurIPS 2019).

    Per coordinate j: ``malicious_j = mu_j - z_max * sigma_j``, where ``mu`` and ``sigma`` are the
    coordinate-wise mean and *population* standard deviation (``ddof=0``) of the benign updates
    the colluders can see, and ``z_max`` is :func:`alie_z_max` ``(num_sites, num_attackers)``.
    All attackers send this same reply. It stays within ``z_max`` standard deviations of the
    mean in every coordinate, so median/trimmed-mean/Krum-style filters keep it, yet all
    attackers push every coordinate the same way.

    Sign convention: the paper's Algorithm 1 writes the result on the shared *parameters* as
    ``mu_j + z_max * sigma_j``; its argument only needs ``|malicious_j - mu_j| <= z_max *
    sigma_j``, so the side is a convention. Here the attack acts on updates and uses
    ``mu - z_max * sigma``, the convention of the gradient/update re-implementations. With
    ``z_max > 0`` this shrinks every coordinate of the mean update toward and past zero
    (a coordinate with mean above its std reverses), i.e. it slows or reverses progress.

    With one benign update (an attacker that only knows its own), ``sigma = 0`` and the reply
    equals that update: ALIE then does nothing; pass the colluders' updates to make it bite.
    """
    benign = _check_benign(benign)
    z = alie_z_max(num_sites, num_attackers)
    out = {}
    for k in benign[0]:
        mu = _mean(benign, k)
        var = np.zeros_like(mu)
        for b in benign:  # two passes (mean, then squared deviations): no cancellation
            var += (b[k] - mu) ** 2
        sigma = np.sqrt(var / len(benign))
        out[k] = (mu - z * sigma).astype(np.asarray(benign[0][k]).dtype, copy=False)
    return out


def ipm(benign: Sequence[Update], epsilon: float) -> dict[str, np.ndarray]:
    """Inner Product Manipulation (Xie, Koyejo, Gupta, UAI 2020).

    ``malicious = -epsilon * mean(benign)``: the attackers send the negated, scaled mean of the
    benign updates, so that the aggregate's inner product with the true mean turns negative.
    Small ``epsilon`` (the paper uses 0.1) hides from distance-based filters such as Krum;
    large ``epsilon`` (e.g. 100) overwhelms coordinate-wise median / trimmed mean.
    """
    benign = _check_benign(benign)
    eps = _finite(epsilon)
    if eps <= 0:
        raise ValueError(f"attack.scale: got {epsilon!r}; allowed: IPM's epsilon, a float > 0")
    return {
        k: (-eps * _mean(benign, k)).astype(np.asarray(benign[0][k]).dtype, copy=False)
        for k in benign[0]
    }


# --------------------------------------------------------------------------------------------
# Data attack


def flip_labels(label_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Label flipping: class ``i`` becomes ``num_classes - 1 - i`` (e.g. Tolpegin et al.,
    "Data Poisoning Attacks Against Federated Learning Systems", ESORICS 2020).

    An involution (flipping twice gives the labels back); returns a new array of the same dtype
    and shape. Negative ids (``-100``, the usual "ignore" marker of padded positions) are left as
    they are; an id ``>= num_classes`` is a ``ValueError``.
    """
    labels = np.asarray(label_ids)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label_ids: got dtype {labels.dtype}; allowed: an integer array")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes: got {num_classes!r}; allowed: an integer >= 1")
    if num_classes < 1:
        raise ValueError(f"num_classes: got {num_classes}; allowed: an integer >= 1")
    if labels.size and labels.max() >= num_classes:
        raise ValueError(
            f"label_ids: got label {labels.max()}; allowed: ids in [0, {num_classes}) "
            "(or negative for ignored positions)"
        )
    if num_classes - 1 > np.iinfo(labels.dtype).max:
        raise ValueError(
            f"label_ids: dtype {labels.dtype} cannot hold the flipped id {num_classes - 1}; "
            "allowed: a wider integer dtype"
        )
    flipped = (num_classes - 1 - labels.astype(np.int64)).astype(labels.dtype)
    return np.where(labels < 0, labels, flipped)


# --------------------------------------------------------------------------------------------
# Dispatch


def attack_update(
    kind: str,
    update: Update,
    *,
    scale: float = 1.0,
    rng: np.random.Generator | None = None,
    benign: Sequence[Update] | None = None,
    num_sites: int | None = None,
    num_attackers: int | None = None,
) -> dict[str, np.ndarray]:
    """What an attacking site replies instead of its honest ``update``.

    ``kind`` (``attack.kind``):

    - ``none``: the update unchanged (a new dict holding the same arrays).
    - ``label_flip``: unchanged too -- the attack happened on the data (:func:`flip_labels`).
    - ``sign_flip``: :func:`sign_flip` ``(update, scale)``.
    - ``scale``: :func:`scale_attack` ``(update, scale)``.
    - ``gaussian``: :func:`gaussian` ``(update, scale, rng)``; ``rng`` is required.
    - ``alie``: :func:`alie` ``(benign, num_sites, num_attackers)``; both counts required.
    - ``ipm``: :func:`ipm` ``(benign, epsilon=scale)``.

    For ``alie`` and ``ipm``, ``benign`` defaults to ``[update]`` (the attacker's own honest
    update: all a lone, non-omniscient attacker knows).
    """
    if kind in ("none", "label_flip"):
        return dict(update)
    if kind == "sign_flip":
        return sign_flip(update, scale)
    if kind == "scale":
        return scale_attack(update, scale)
    if kind == "gaussian":
        if rng is None:
            raise ValueError("attack.kind=gaussian needs rng (a numpy Generator); got None")
        return gaussian(update, scale, rng)
    if kind in ("alie", "ipm"):
        seen = [update] if benign is None else benign
        if kind == "ipm":
            return ipm(seen, scale)
        if num_sites is None or num_attackers is None:
            raise ValueError(
                f"attack.kind=alie needs num_sites and num_attackers; got num_sites={num_sites}, "
                f"num_attackers={num_attackers}"
            )
        return alie(seen, num_sites, num_attackers)
    raise ValueError(f"attack.kind: got {kind!r}; allowed: {' | '.join(ATTACK_KINDS)}")
