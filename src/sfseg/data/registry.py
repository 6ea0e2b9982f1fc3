"""Dataset registry: one entry function per benchmark layout, built by name from configs and the CLI."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from sfseg.data.classes import PROTOCOLS, ClassProtocol, get_protocol, protocol_of
from sfseg.errors import ConfigError
from sfseg.registry import DATASETS


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_protocol(name: str, protocol: str = "", classes: Sequence[str] | None = None) -> ClassProtocol:
    """The protocol named ``protocol``; when it is empty, the dataset's own, or for a dataset without one
    (a folder of images), that of the model's ``classes``."""
    DATASETS.check(name)
    if protocol:
        return get_protocol(protocol)
    own = DATASETS.meta(name)["protocol"]
    if own is not None:
        return own
    if classes is None:
        raise ConfigError(
            f"dataset {name!r} takes its classes from the model; without one, name them: data.protocol "
            f"(--protocol on the command line), one of {sorted(PROTOCOLS)}"
        )
    return protocol_of(classes)


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    protocol: str | ClassProtocol = "",
    labels: bool | str = True,
    progress: bool = False,
    **options,
) -> Dataset:
    """Build split ``split`` of dataset ``name`` at ``root`` for class protocol ``protocol`` (default: the
    dataset's own). Items follow the contract of :class:`sfseg.data.file_dataset.FileListDataset`.

    ``progress`` reaches the entries that have slow set-up work to show (loading ToyCity into memory,
    checking GTA5's image sizes); the others build instantly and take no such argument.
    """
    fn = DATASETS.get(name)
    if "progress" in inspect.signature(fn).parameters:
        options["progress"] = progress
    if not isinstance(protocol, ClassProtocol):
        protocol = dataset_protocol(name, protocol)
    return fn(root, split, protocol, labels=labels, **options)
