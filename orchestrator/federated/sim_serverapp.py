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
"""

from __future__ import annotations

import clients.client_app  # noqa: F401  (loaded under Flower's lock; see the module doc)
from orchestrator.federated.server_app import app

__all__ = ["app"]
