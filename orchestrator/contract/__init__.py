"""The federation's contract: what the server and every site agree on.

Both sides import this package; it imports neither (``orchestrator.federated`` is the server,
``clients`` the site, ``strategies`` the aggregation). Its modules:

- :mod:`~orchestrator.contract.task`: the site task (hyperparameters, data settings, model spec)
  declared once, encoded into and decoded from every message's ``config`` record.
- :mod:`~orchestrator.contract.messages`: record names and the reply layout.
- :mod:`~orchestrator.contract.model`: the model both sides build from the spec, its state dict.
- :mod:`~orchestrator.contract.arrays`: tensors <-> Flower ``ArrayRecord`` (checked decoding).
- :mod:`~orchestrator.contract.partition`: how one dataset is split into simulated sites.
- :mod:`~orchestrator.contract.metrics`: metric names and formulas.
"""
