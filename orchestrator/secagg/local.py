"""Run a whole SecAgg+ round in one process (tests, benchmarks, debugging the protocol).

The Flower wiring (``orchestrator/federated/secagg_round.py`` on the server, the ClientApp's
``train.secagg-*`` handlers on the sites) moves exactly these payloads between the two sides.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np

from orchestrator.secagg.primitives import SecAggError
from orchestrator.secagg.protocol import Payload, RoundParams
from orchestrator.secagg.server import ServerRound
from orchestrator.secagg.site import SiteRound

Tamper = Callable[[str, int, Payload], Payload]


def run_round(
    qs: Sequence[np.ndarray],
    params: RoundParams,
    *,
    drop_before_mask: Collection[int] = (),
    drop_before_unmask: Collection[int] = (),
    tamper: Tamper | None = None,
) -> tuple[np.ndarray, int, ServerRound]:
    """Sites ``1..n`` hold ``qs[i - 1]``; returns the server's ``(sum, count, server)``.

    ``drop_before_mask``: sites that vanish after sharing their keys (they are recovered);
    ``drop_before_unmask``: sites that send a masked input but not their shares.
    ``tamper(step, sid, payload)`` may rewrite any message on its way (tests).
    """
    server = ServerRound(params)
    t = tamper or (lambda _step, _sid, p: p)
    sites: dict[int, SiteRound] = {}
    for sid in range(1, params.num_sites + 1):
        site, reply = SiteRound.advertise(t("setup", sid, server.setup(sid)))
        sites[sid] = site
        server.receive_keys(sid, t("keys", sid, reply))
    for sid, req in server.share_requests().items():
        server.receive_shares(sid, t("shares", sid, sites[sid].share_keys(req)))
    for sid, req in server.mask_requests().items():
        if sid in drop_before_mask:
            continue
        y, reply = sites[sid].masked_input(t("mask-request", sid, req), qs[sid - 1])
        tampered = t("masked", sid, {"y": y, **reply})
        try:
            server.receive_masked(sid, tampered.pop("y"), tampered)
        except SecAggError:
            continue  # rejected: the site counts as dropped
    for sid, req in server.unmask_requests().items():
        if sid in drop_before_unmask:
            continue
        server.receive_unmask(sid, t("unmask", sid, sites[sid].unmask(req)))
    total, count = server.result()
    return total, count, server
