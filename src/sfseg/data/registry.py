"""Dataset registry: one entry function per benchmark layout, built by name from configs and the CLI."""

from __future__ import annotations

import inspect
from pathlib import Path

from torch.utils.data import Dataset

from sfseg.data.classes import ClassProtocol, get_protocol
from sfseg.registry import DATASETS


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_protocol(name: str, protocol: str = "") -> ClassProtocol:
    """The protocol named ``protocol``, or the dataset's default when it is empty."""
    DATASETS.check(name)
    return get_protocol(protocol) if protocol else DATASETS.meta(name)["protocol"]


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
    dataset's own). Items follow the contract of :class:`sfseg.data.file_dataset.FileListDataset`.

    ``progress`` reaches the entries that have slow set-up work to show (loading ToyCity into memory,
    checking GTA5's image sizes); the others build instantly and take no such argument.
    """
    fn = DATASETS.get(name)
    if "progress" in inspect.signature(fn).parameters:
        options["progress"] = progress
    return fn(root, split, dataset_protocol(name, protocol), labels=labels, **options)
