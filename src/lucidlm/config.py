"""Dataclass configs read from dicts (YAML) with unknown keys refused by name."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from .errors import LucidError

T = TypeVar("T")


def from_dict(cls: type[T], values: dict | None, where: str) -> T:
    values = values or {}
    if not isinstance(values, dict):
        raise LucidError(f"{where}: expected a mapping of keys to values, found {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise LucidError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise LucidError(f"{where}: {e}") from None
