"""Secure aggregation across real sites: SuperLink (TLS + site auth) and three SuperNodes on
127.0.0.1, each site reading its own CSV. One round with ``privacy.secure_aggregation=true``
completes (four exchanges per site: each a fresh ClientApp process, secrets kept in the node's
Context.state) and its model equals the same round without secure aggregation (computed
in-process on the same files) up to quantization.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from clients.client_app import app as client_app
from orchestrator.config.loader import to_yaml
from orchestrator.federated.local_grid import LocalGrid, ensure_task_identity
from orchestrator.federated.rounds import run_federated
from orchestrator.processes import server_session
from orchestrator.processes.managed import ManagedProcess, stop_all
from orchestrator.processes.network import free_port
from orchestrator.secagg.quantize import step
from tests.integration.test_sites import SITES, Fed, job, start_site
from tests.integration.test_sites import fed as fed  # the module-scoped fixture

pytestmark = pytest.mark.integration

ONE_ROUND = ("federation.num_rounds=1", "strategy.weighting=uniform", "federation.min_sites=3")


def test_secure_round_across_real_sites_equals_plain_round(fed: Fed) -> None:
    run_dir = fed.root / "secagg"
    secure = job(fed, *ONE_ROUND, "privacy.secure_aggregation=true")
    opts = server_session.ServerOptions(port=free_port(), certs=fed.pki.ca_cert.parent)
    procs: list[ManagedProcess] = []
    with server_session.ServerSession(opts, run_dir / "server", run_dir / "tls") as session:
        session.open()
        session.register([fed.keys[n].public for n in SITES])
        try:
            procs += [start_site(fed, n, session.address, run_dir / "sites") for n in SITES]
            run = session.run(to_yaml(secure), run_dir)
        finally:
            stop_all(procs)
    assert run.ok, run.status
    row = run.metrics[1]
    assert not row["skipped"] and row["train"]["sites-accepted"] == 3, row
    assert set(row["sites"]) == set(SITES)

    # The same round without secure aggregation, in this process, on the same files.
    ensure_task_identity()
    nodes = [{"data-path": str(fed.data[n]), "site-name": n, "num-threads": 1} for n in SITES]
    plain = job(fed, *ONE_ROUND)
    run_federated(LocalGrid(client_app, nodes), plain, fed.root / "plain")
    a = load_file(str(fed.root / "plain" / "export" / "model.safetensors"))
    b = load_file(str(run_dir / "export" / "model.safetensors"))
    tol = step(1.0, 3) + 1e-5  # quantization + float32 differences between processes
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=tol, rtol=0, err_msg=k)
