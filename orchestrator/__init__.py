"""fedray: distributed (Ray Train) and federated (Flower) training of transformer LMs.

Public API: ``load_config``, ``pretrain`` and the config dataclasses; everything else is internal.
"""

__version__ = "0.1.0"

from orchestrator import quiet_imports as _quiet_imports

_quiet_imports.install()  # before anything imports transformers (and, through it, torchao)
