"""Baselines a federated job is compared with: :mod:`.centralized` trains on every site's rows
at one place (``fedray simulate --centralized``)."""
