"""Secure aggregation (SecAgg+): the server learns only the sum of the sites' updates.

Pure protocol code (no Flower, no clients, no strategies): :mod:`primitives` (X25519, HKDF,
AES-GCM, AES-CTR masks, HMAC, Shamir), :mod:`quantize` (uint32 fixed point), :mod:`graph`
(SecAgg+'s neighbour graph), :mod:`protocol` (parameters, message decoding), :mod:`site` / :mod:`server` (the two state
machines).
"""

from orchestrator.secagg.primitives import SecAggError
from orchestrator.secagg.protocol import RoundAborted, RoundParams, new_params, site_ids
from orchestrator.secagg.server import ServerRound
from orchestrator.secagg.site import SiteRound

__all__ = [
    "RoundAborted",
    "RoundParams",
    "SecAggError",
    "ServerRound",
    "SiteRound",
    "new_params",
    "site_ids",
]
