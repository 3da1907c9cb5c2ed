"""``fedray tune``: hyperparameter search over a pretraining job or a federation, on Ray Tune.

- :mod:`~orchestrator.tune.space`: ``tune.space`` parsed and checked against the tuned job (pure);
- :mod:`~orchestrator.tune.setup`: a tune config loaded, its job kind, metric and resources (pure);
- :mod:`~orchestrator.tune.search`: the space, searcher and scheduler as Ray Tune objects;
- :mod:`~orchestrator.tune.trials`: what one trial runs (the commands' own code paths);
- :mod:`~orchestrator.tune.results`: rows of ``trials.jsonl``, the console table, best.yaml,
  the search's privacy spend (pure);
- :mod:`~orchestrator.tune.runner`: :func:`run_tune` (start or resume a search, collect it).
"""
