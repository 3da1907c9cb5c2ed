"""The check every config section runs in ``__post_init__``: :func:`require` raises a
:class:`FieldError` naming the field, the value received and what is allowed; the loader adds the
section's key path (``train.lr``) when it reports it."""

from __future__ import annotations

from typing import Any


class FieldError(ValueError):
    """A config value that is well-typed but not allowed.

    ``field`` is the name inside the section; the loader turns it into a full key path.
    """

    def __init__(self, owner: object, field: str, value: Any, allowed: str, fix: str = ""):
        self.owner = type(owner)
        self.field = field
        self.value = value
        self.allowed = allowed
        self.fix = fix
        super().__init__(f"{field}={value!r}: expected {allowed}" + (f". {fix}" if fix else ""))


def require(ok: bool, owner: object, name: str, allowed: str, fix: str = "") -> None:
    if not ok:
        raise FieldError(owner, name, getattr(owner, name), allowed, fix)
