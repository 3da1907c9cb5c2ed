"""The ``fedray`` command handlers, one module per command (``cli.py`` is the entry that picks
one): :mod:`.job` runs the job commands (:mod:`.pretrain`, :mod:`.simulate`); :mod:`.server`,
:mod:`.site` and :mod:`.certs` (``certs``, ``site-key``) have flags of their own; :mod:`.plan`
renders ``--dry-run``. Every one parses, reports errors, exits and stops on a signal the same way
(:mod:`.common`).

Arrows run one way: commands -> jobs (:mod:`orchestrator.pretrain`,
:mod:`orchestrator.federated`, :mod:`orchestrator.baseline`) -> shared code
(:mod:`orchestrator.processes`, :mod:`orchestrator.contract`) -> :mod:`orchestrator.config`.
Nothing here is imported by a job.
"""
