"""Secure aggregation (SecAgg+): the server learns only the sum of the sites' updates.

Pure protocol code (no Flower, no clients, no strategies): :mod:`primitives` (X25519, HKDF,
AES-GCM, AES-CTR masks, HMAC, Shamir), :mod:`quantize` (uint32 fixed point), :mod:`graph`
(SecAgg+'s neighbour graph), :mod:`protocol` (the site and server state machines).
"""

from orchestrator.secagg.primitives import SecAggError
from orchestrator.secagg.protocol import (
    RoundAborted,
    RoundParams,
    ServerRound,
    SiteRound,
    new_params,
    site_ids,
)

__all__ = [
    "RoundAborted",
    "RoundParams",
    "SecAggError",
    "ServerRound",
    "SiteRound",
    "new_params",
    "site_ids",
]
