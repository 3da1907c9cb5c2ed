"""Processes and network, shared by every command that starts one (``fedray pretrain``,
``simulate``, ``server``, ``site``, ``doctor``): start, watch and stop child processes by PID
(:mod:`.managed`), stop on a signal (:mod:`.signals`), ports and TCP probes (:mod:`.network`),
what Flower is handed (:mod:`.launch`: argv, environment, config files), the ``flwr`` CLI
(:mod:`.flwr_cli`), a SuperLink session (:mod:`.server_session`), a site's SuperNode
(:mod:`.site`) and the TLS / site-key files they use (:mod:`.credentials`).

Nothing here knows what a round does: the federated job (:mod:`orchestrator.federated`) runs
inside the processes started here. Imports nothing at package level, so ``fedray --help`` stays
fast.
"""
