"""Secure aggregation cost: upload bytes and site / server milliseconds per round vs plain FedAvg.

    python bench/bench_secagg.py [--sites 5 10 50 100] [--params 10000000] [--degree 0 16]
        [--dropouts 1] [--out bench/results/secagg.json]

Protocol level (``orchestrator/secagg``, no Flower processes): a round of ``n`` sites on a
``--params``-value float32 update. ``--degree 0`` is all pairs (SecAgg, Bonawitz et al. 2017);
``k > 0`` is SecAgg+'s neighbour graph of degree ``k`` (Bell et al. 2020).

* **site ms**: one site's whole round: flatten + quantize (stochastic rounding) + key
  generation + Shamir sharing + encryption + masking (k + 1 AES-CTR masks) + unmasking replies.
  Measured on one site of the round (every site does the same work).
* **server ms**: routing the key/share messages, authenticating and folding ``n`` masked
  vectors, rebuilding the survivors' self-mask seeds and removing their masks, recovering
  ``--dropouts`` sites that vanished after sharing (their pairwise masks), dequantizing.
  The other sites' masked vectors are stand-ins (random uint32 with a valid tag): the server's
  work does not depend on their content, and computing ``n`` real ones would cost ``n`` times
  the site time here (2 cores). Their sum is therefore not checked (tests/unit/test_secagg.py is).
* **plain FedAvg**: the site sends its float32 update; the server folds ``n`` of them
  (``strategies.running_sum.RunningSum``, float64) and takes the mean.
* **upload**: what one site sends in a round (payload bytes: keys, ciphertexts, tag, masked
  vector) / the float32 update's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from orchestrator.secagg import ServerRound, SiteRound, new_params
from orchestrator.secagg import primitives as P
from orchestrator.secagg.protocol import MAC, sid_bytes
from orchestrator.secagg.quantize import quantize
from strategies.running_sum import RunningSum


def payload_bytes(p: dict) -> int:
    n = 0
    for v in p.values():
        for x in v if isinstance(v, list) else [v]:
            n += len(x) if isinstance(x, bytes) else 8
    return n


def plain(n: int, update: np.ndarray) -> float:
    t0 = time.perf_counter()
    acc = RunningSum(np.float64)
    for _ in range(n):
        acc.fold({"w": update}, 1.0)
    acc.mean()
    return (time.perf_counter() - t0) * 1e3


def secure(n: int, degree: int | None, update: np.ndarray, dropouts: int) -> dict:
    d = update.size
    params = new_params(n, None, degree, 1.0, d)
    server = ServerRound(params)
    t_server = 0.0
    sites: dict[int, SiteRound] = {}
    t_setup = 0.0  # site 1's key generation and sharing
    for sid in range(1, n + 1):
        t1 = time.perf_counter()
        sites[sid], keys = SiteRound.advertise(server.setup(sid))
        t_setup += time.perf_counter() - t1 if sid == 1 else 0.0
        t0 = time.perf_counter()
        server.receive_keys(sid, keys)
        t_server += time.perf_counter() - t0
    t0 = time.perf_counter()
    reqs = server.share_requests()
    t_server += time.perf_counter() - t0
    up = {1: 64}
    for sid, req in reqs.items():
        t1 = time.perf_counter()
        reply = sites[sid].share_keys(req)
        t_setup += time.perf_counter() - t1 if sid == 1 else 0.0
        if sid == 1:
            up[1] += payload_bytes(reply)
        t0 = time.perf_counter()
        server.receive_shares(sid, reply)
        t_server += time.perf_counter() - t0
    t0 = time.perf_counter()
    mreqs = server.mask_requests()
    t_server += time.perf_counter() - t0
    dropped = set(range(n - dropouts + 1, n + 1))
    rng = np.random.default_rng(0)
    for sid, req in mreqs.items():
        if sid in dropped:
            continue
        if sid == 1:  # the measured site: its real masked input
            t_site0 = time.perf_counter()
            q, _ = quantize(update.astype(np.float64), 1.0, n, rng)
            y, reply = sites[sid].masked_input(req, q)
            t_mask = time.perf_counter() - t_site0
            up[1] += y.nbytes + len(reply["tag"])
        else:  # a stand-in: random vector, valid tag (see the module docstring)
            y = rng.integers(0, 2**32, d, dtype=np.uint32)
            sites[sid].phase = 3
            key = P.agree(sites[sid].c_sk, server.pk, MAC, params.nonce)
            reply = {"tag": P.mac(key, params.nonce, sid_bytes(sid), y.tobytes())}
            sites[sid].received = {u: ct for u, ct in zip(req["from"], req["ct"], strict=True)}
        t0 = time.perf_counter()
        server.receive_masked(sid, y, reply)
        t_server += time.perf_counter() - t0
    t0 = time.perf_counter()
    ureqs = server.unmask_requests()
    t_server += time.perf_counter() - t0
    t_unmask = 0.0
    for sid, req in ureqs.items():
        t1 = time.perf_counter()
        reply = sites[sid].unmask(req)
        if sid == 1:
            t_unmask = time.perf_counter() - t1
            up[1] += payload_bytes(reply)
        t0 = time.perf_counter()
        server.receive_unmask(sid, reply)
        t_server += time.perf_counter() - t0
    t0 = time.perf_counter()
    server.result()
    t_server += time.perf_counter() - t0
    return {
        "site_ms": round((t_setup + t_mask + t_unmask) * 1e3, 1),
        "server_ms": round(t_server * 1e3, 1),
        "upload_ratio": round(up[1] / (4 * d), 5),
        "upload_bytes": up[1],
        "degree": params.degree,
        "threshold": params.threshold,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, nargs="+", default=[5, 10, 50, 100])
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--degree", type=int, nargs="+", default=[0, 16], help="0 = all pairs")
    ap.add_argument("--dropouts", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/results/secagg.json"))
    a = ap.parse_args()
    update = np.random.default_rng(1).normal(0, 1e-3, a.params).astype(np.float32)
    rows = []
    print(f"{a.params:,} parameters, {a.dropouts} dropout(s) after sharing; {os.cpu_count()} CPUs")
    print("sites degree  t  site ms  server ms  plain server ms  upload / fp32  load")
    for n in a.sites:
        base = plain(n, update)
        for k in a.degree:
            if k and k >= n - 1:
                continue  # the same graph as all pairs
            r = secure(n, k or None, update, a.dropouts)
            # This machine is shared: the 1-minute load average says how much to trust a row.
            r.update(sites=n, plain_server_ms=round(base, 1), load=round(os.getloadavg()[0], 1))
            rows.append(r)
            print(
                f"{n:5d} {r['degree']:6d} {r['threshold']:2d} {r['site_ms']:8.0f} "
                f"{r['server_ms']:10.0f} {base:16.0f} {r['upload_ratio']:14.4f} {r['load']:5.1f}"
            )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps({"params": a.params, "dropouts": a.dropouts, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
