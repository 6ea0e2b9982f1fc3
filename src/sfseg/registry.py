"""One registry helper for every pluggable kind of thing: models, datasets, pseudo-labellers, loss parts,
mixings, methods and validators (after mmengine's ``Registry`` and timm's model registry, without their
string-typed configs).

A registry maps names to objects (classes or entry functions) and, optionally, per-entry metadata
(a dataset's default class protocol, a model's checkpoint hooks). Registering is a decorator::

    MIXINGS = Registry("mixing")

    @MIXINGS.register("classmix")
    class ClassMix: ...

Recipes name entries by string; :meth:`Registry.check` turns an unknown name into one error with the
registered names and a "did you mean". A registry may name a function that imports the modules holding
its built-in entries, so looking something up never depends on import order.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from sfseg.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind.

    Args:
        kind: what the entries are, for messages ("model", "loss part").
        builtins: imports the modules that register the built-in entries (called once, on first lookup).
    """

    def __init__(self, kind: str, builtins: Callable[[], object] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._builtins = builtins

    def _load(self) -> None:
        if self._builtins is not None:
            load, self._builtins = self._builtins, None
            load()

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator registering an object under ``name`` (default: its ``__name__``), with metadata."""

        def add(obj: T) -> T:
            self.add(name or obj.__name__, obj, **meta)
            return obj

        return add

    def add(self, name: str, obj: T, **meta: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj
        self._meta[name] = meta

    def remove(self, name: str) -> None:
        """Forget an entry (for tests that register a throwaway one)."""
        self._entries.pop(name, None)
        self._meta.pop(name, None)

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; registered: {self.names()}"

    def check(self, name: str, where: str = "") -> None:
        """Raise :class:`ConfigError` unless ``name`` is registered (with the names and a suggestion)."""
        if name not in self:
            raise ConfigError(f"{where + ': ' if where else ''}{self._unknown(name)}")

    def validate(self, name: str, key: str) -> None:
        """For a config's ``check()``: :class:`~sfseg.config.ValueCheck` for ``key`` unless ``name`` is
        registered (the loader then names the file or override that gave it)."""
        from sfseg.config import ValueCheck

        if name not in self:
            raise ValueCheck(key, self._unknown(name))

    def get(self, name: str, where: str = "") -> T:
        self.check(name, where)
        return self._entries[name]

    def meta(self, name: str) -> dict[str, Any]:
        self.check(name)
        return self._meta[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
