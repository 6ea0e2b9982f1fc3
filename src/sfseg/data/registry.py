"""Dataset registry: one entry function per benchmark layout, built by name from configs and the CLI."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from sfseg.data.classes import ClassProtocol, get_protocol
from sfseg.errors import ConfigError

_DATASETS: dict[str, tuple[Callable[..., Dataset], ClassProtocol]] = {}


def register_dataset(name: str, default_protocol: ClassProtocol):
    """Decorator: register ``fn(root, split, protocol, labels, **options)`` under ``name``."""

    def wrap(fn):
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = (fn, default_protocol)
        return fn

    return wrap


def list_datasets() -> list[str]:
    _register_builtin()
    return sorted(_DATASETS)


def dataset_protocol(name: str, protocol: str = "") -> ClassProtocol:
    """The protocol named ``protocol``, or the dataset's default when it is empty."""
    _check(name)
    return get_protocol(protocol) if protocol else _DATASETS[name][1]


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    protocol: str = "",
    labels: bool | str = True,
    progress: bool = False,
    **options,
) -> Dataset:
    """Build split ``split`` of dataset ``name`` at ``root`` for class protocol ``protocol`` (default: the
    dataset's own). Items follow the contract of :class:`sfseg.data.files.FileListDataset`.

    ``progress`` reaches the entries that have slow set-up work to show (loading ToyCity into memory,
    checking GTA5's image sizes); the others build instantly and take no such argument.
    """
    _check(name)
    fn, _ = _DATASETS[name]
    if "progress" in inspect.signature(fn).parameters:
        options["progress"] = progress
    return fn(root, split, dataset_protocol(name, protocol), labels=labels, **options)


def _register_builtin() -> None:
    from sfseg.data import cityscapes, folder, gta5, synthia, toycity_dataset  # noqa: F401  (they register)


def _check(name: str) -> None:
    _register_builtin()
    if name not in _DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; registered datasets: {list_datasets()}")
