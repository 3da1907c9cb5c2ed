"""Simulated sites on a pool of SuperNodes: the record that names the site a message is for.

``fedray simulate`` with ``federation.simulation_nodes`` below ``num_sites`` (or automatically
for large populations) runs fewer simulated SuperNodes than sites. The server samples SITE ids
``0 .. num_sites-1``, sends each sampled site's message to a distinct pool node, and adds a
:data:`SIM_SITE` record ``{"site-id": i, "num-sites": N}``. A simulated ClientApp then acts as
site ``i`` of ``N`` (data partition, attacker role, persistent state, name); a real site refuses
such a message (its data is its own). Both sides import this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, RecordDict

SIM_SITE = "sim-site"
"""Record name (server -> simulated site): which site of the population this message is for."""
SITE_ID = "site-id"
NUM_SITES = "num-sites"
MAX_SITES = 10_000_000
"""Bound on a population a message may name (a sanity check on untrusted input)."""
POOLED = "pooled-site"
"""Node config key a simulated ClientApp sets on its own copy of the node config when it acts
for a site named by the message (the site's state then never lives in the node's Context)."""


def site_record(site_id: int, num_sites: int) -> ConfigRecord:
    return ConfigRecord({SITE_ID: int(site_id), NUM_SITES: int(num_sites)})


def decode_site(content: RecordDict) -> tuple[int, int] | None:
    """``(site id, num sites)`` from a message, None when it names no site; ValueError when
    the record is malformed or out of range."""
    if SIM_SITE not in content:
        return None
    rec = content[SIM_SITE]
    if not isinstance(rec, ConfigRecord):
        raise ValueError(f"message record {SIM_SITE!r} is a {type(rec).__name__}, not a config")
    sid, num = rec.get(SITE_ID), rec.get(NUM_SITES)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (sid, num)):
        raise ValueError(f"message record {SIM_SITE!r}: {SITE_ID}/{NUM_SITES} must be integers")
    assert isinstance(sid, int) and isinstance(num, int)
    if not 1 <= num <= MAX_SITES or not 0 <= sid < num:
        raise ValueError(f"message record {SIM_SITE!r}: site {sid} of {num} is out of range")
    return sid, num


def acting_node_config(content: RecordDict, node_config: Mapping[str, Any]) -> dict[str, Any]:
    """The node config a ClientApp acts with: its own, or, on a simulated pool node whose
    message names a site, the site's (``partition-id`` = site id, ``num-partitions`` = the
    population). A real site (``data-path``, or no ``partition-id``) refuses a named site."""
    cfg = dict(node_config)
    named = decode_site(content)
    if named is None:
        return cfg
    if "data-path" in cfg or "partition-id" not in cfg:
        raise ValueError(
            f"the server named a simulated site (record {SIM_SITE!r}) but this is a real site "
            "(node config data-path): a real site trains on its own data only"
        )
    cfg["partition-id"], cfg["num-partitions"] = named
    cfg[POOLED] = True
    return cfg


__all__ = [
    "MAX_SITES",
    "NUM_SITES",
    "POOLED",
    "SIM_SITE",
    "SITE_ID",
    "acting_node_config",
    "decode_site",
    "site_record",
]
