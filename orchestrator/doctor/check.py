"""One line of ``fedray doctor`` output: a check's status, what it found, how to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Literal

Status = Literal["OK", "WARN", "FAIL"]
GiB = 1024**3


@dataclass
class Check:
    status: Status
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.detail}" + (
            f" -> fix: {self.fix}" if self.fix else ""
        )


def installed_version(name: str) -> str | None:
    """The installed distribution's version, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
