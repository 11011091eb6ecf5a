"""Named choices (families, concept layers, poolings, pruning and rewiring scores, schedules) as
registries, after timm's ``@register_model``: adding one is one function or class and one
``@REGISTRY.register("name")``; a config naming an unknown one fails when it is read, with the
names there are."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from .errors import LucidError

T = TypeVar("T")


class Registry(Generic[T]):
    """``base``: the class every entry must be (or subclass): its contract, checked when registered."""

    def __init__(self, kind: str, base: type | None = None):
        self.kind, self.base = kind, base
        self._entries: dict[str, T] = {}

    @classmethod
    def choices(cls, kind: str, entries: dict[str, str]) -> Registry[str]:
        """A registry of named choices, each with a line saying what it means (a config's
        ``mode``, ``label_penalty``, …): checked when a config is read, listed in its errors."""
        registry = cls(kind)
        for name, meaning in entries.items():
            registry.register(name)(meaning)
        return registry

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if self.base is not None and not (
                isinstance(entry, self.base) or (isinstance(entry, type) and issubclass(entry, self.base))
            ):
                article = "an" if self.base.__name__[0] in "AEIOU" else "a"
                raise TypeError(f"{self.kind} {name!r}: expected {article} {self.base.__name__}, found {entry!r}")
            self._entries[name] = entry
            return entry

        return add

    @contextmanager
    def registered(self, name: str, entry: T) -> Iterator[T]:
        """``entry`` registered as ``name`` for the block only (a test's toy entry)."""
        self.register(name)(entry)
        try:
            yield entry
        finally:
            del self._entries[name]

    def get(self, name: str, field: str | None = None) -> T:
        """The entry called ``name``; else an error naming ``field`` (default: the kind) and the valid names."""
        if name not in self._entries:
            raise LucidError(f"{field or self.kind}: expected one of {self.names}, found {name!r}")
        return self._entries[name]

    def check(self, name: str, field: str | None = None) -> str:
        self.get(name, field)
        return name

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()
