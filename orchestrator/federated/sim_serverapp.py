"""The ServerApp component ``fedray simulate`` submits: ``orchestrator.federated.server_app:app``,
loaded so that ``flwr-simulation``'s two threads never import the same modules at once.

``flwr-simulation`` loads and runs the ServerApp in a thread while its main thread loads the
ClientApp (``clients.client_app``). Flower 1.41 serialises the two component loads with one
lock (``flwr.supercore.object_ref.load_app``), and it takes a module that is already in
``sys.modules`` as loaded, even while another thread is still executing it. Imports the
ServerApp makes *after* its load (inside ``main``) therefore race the ClientApp load: the main
thread can pick up a half-initialised module ("partially initialized module
'clients.client_app' has no attribute 'app'", "cannot import name 'PreTrainedTokenizerBase' from
'transformers'"; Flower exit codes 607/700). Both happened in ``bench/bench_simulate_overhead.py``.

So this module imports the ClientApp module and the ServerApp module at load time, under
Flower's lock: whichever thread loads first does every shared import, and the other finds them
complete.

It is also the one ServerApp that knows it runs on the simulation engine, so it is where a
simulation pool turns on: when ``federation.simulation_pool`` is set (``federation.simulation_nodes``,
or automatically for large populations), ``fedray simulate`` started that many SuperNodes and
the round loop sends each sampled site's message to one of them, naming the site
(orchestrator/contract/site_pool.py). ``fedray server`` (real sites) never submits this app.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

# Loaded under Flower's lock (see the module doc): the ClientApp, and the handlers it imports on
# its first message.
import clients.client_app
import clients.site_handlers  # noqa: F401
from orchestrator.federated.server_app import job_from_run_config, run_federated

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    job, run_dir = job_from_run_config(dict(context.run_config))
    pool = job.federation.simulation_pool(job.privacy.secure_aggregation)
    run_federated(grid, job, run_dir, site_pool=pool is not None)


__all__ = ["app"]
