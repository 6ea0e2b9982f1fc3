"""Every registry of sfseg, in one place, and the one helper they share (after mmengine's ``Registry`` with
lazy ``locations`` and timm's model registry, without their string-typed configs).

A registry maps names to objects (classes, entry functions, importers) and, optionally, per-entry metadata
(a dataset's default class protocol, a model's checkpoint hooks). There is one way to register, the
registry's :meth:`~Registry.register`, used as a decorator (or called with the object, for an instance)::

    @LOSS_PARTS.register("negative")
    class NegativeLearning(LossPart): ...

    IMPORTERS.register("mit", Importer(...))

Each registry names the modules that hold its built-in entries (``locations``); they are imported the
first time the registry is read, by name, so this module imports nothing of sfseg's above it and
looking something up never depends on import order. Recipes name entries by string;
:meth:`Registry.check` turns an unknown name into one error with the registered names and a "did you
mean". Plug-ins register their own entries the same way (:mod:`sfseg.plugins`).

=================  ==========================================  =========================================
registry           what it holds                               built-ins
=================  ==========================================  =========================================
MODELS             ``fn(num_classes, **kwargs) -> model``       sfseg.models (deeplab_small, deeplab_v2,
                   (metadata: ``hooks``, a ModelHooks)          mit/daformer/segformer, dinov2 ViTs)
IMPORTERS          other projects' checkpoint formats           sfseg.models (*_import.py)
DATASETS           ``fn(root, split, protocol, labels, ...)``   sfseg.data (toycity, cityscapes, gta5,
                   (metadata: ``protocol``, the default)        synthia, folder)
PSEUDO_LABELLERS   pseudo-label selection rules                 sfseg.adapt.pseudo_labels
LOSS_PARTS         loss terms of a method                       sfseg.adapt.parts
MIXINGS            batch mixings (ClassMix)                     sfseg.adapt.mixing
METHODS            method classes (``method.kind``)             sfseg.adapt.method
VALIDATORS         label-free model-selection scores            sfseg.engine.evaluation.validators
=================  ==========================================  =========================================
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from sfseg.errors import ConfigError, ValueCheck

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind.

    Args:
        kind: what the entries are, for messages ("model", "loss part").
        locations: modules that register the built-in entries, imported on the first lookup.
    """

    def __init__(self, kind: str, locations: tuple[str, ...] = ()):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._locations = tuple(locations)

    def _load(self) -> None:
        if self._locations:
            locations, self._locations = self._locations, ()
            for module in locations:
                importlib.import_module(module)

    def register(self, name: str | None = None, obj: T | None = None, **meta: Any) -> Any:
        """Register ``obj`` under ``name`` (default: its ``name`` attribute, else its ``__name__``) with
        metadata; without ``obj``, a decorator that does so."""

        def add(o: T) -> T:
            key = name or getattr(o, "name", "") or o.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = o
            self._meta[key] = meta
            return o

        return add(obj) if obj is not None else add

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
        """For a config's ``check()``: :class:`~sfseg.errors.ValueCheck` for ``key`` unless ``name`` is
        registered (the loader then names the file or override that gave it)."""
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


_MODEL_MODULES = (
    "sfseg.models.deeplab_small",
    "sfseg.models.deeplab_v2",
    "sfseg.models.mit",
    "sfseg.models.vit",
)
_IMPORTER_MODULES = ("sfseg.models.deeplab_v2_import", "sfseg.models.vit_import", "sfseg.models.mit_import")

MODELS: Registry[Callable[..., Any]] = Registry("model", _MODEL_MODULES)
IMPORTERS: Registry[Any] = Registry("checkpoint importer", _IMPORTER_MODULES)
DATASETS: Registry[Callable[..., Any]] = Registry(
    "dataset",
    (
        "sfseg.data.toycity.dataset",
        "sfseg.data.cityscapes",
        "sfseg.data.gta5",
        "sfseg.data.synthia",
        "sfseg.data.folder",
    ),
)
PSEUDO_LABELLERS: Registry[type] = Registry("pseudo-labeller", ("sfseg.adapt.pseudo_labels",))
LOSS_PARTS: Registry[type] = Registry("loss part", ("sfseg.adapt.parts",))
MIXINGS: Registry[Any] = Registry("mixing", ("sfseg.adapt.mixing",))
METHODS: Registry[type] = Registry("method", ("sfseg.adapt.method",))
VALIDATORS: Registry[type] = Registry("validator", ("sfseg.engine.evaluation.validators",))
