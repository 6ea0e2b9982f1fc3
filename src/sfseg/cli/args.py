"""Argument types and help lists of the command line (the lists built from the registries, so that they
name what this installation has, plug-ins included)."""

from __future__ import annotations

import argparse

from sfseg.config import MAX_BATCH, MAX_SEED, MAX_SIDE, MAX_WORKERS


def int_in(low: int, high: int):
    """An argparse type: an integer in ``[low, high]`` (argparse reports anything else as a usage error,
    exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    parse.__name__ = "integer"
    return parse


SEED = int_in(0, MAX_SEED)
JOBS = int_in(1, 64)
SIDE = int_in(1, MAX_SIDE)
BATCH = int_in(1, MAX_BATCH)
WORKERS = int_in(0, MAX_WORKERS)


def names(kind: str) -> str:
    """What this installation has of ``kind``, comma-separated, for a help text."""
    from sfseg.data.classes import PROTOCOLS
    from sfseg.data.toycity import VARIANTS
    from sfseg.models.foreign import known_families
    from sfseg.registry import DATASETS, MODELS, VALIDATORS

    listed = {
        "datasets": lambda: DATASETS.names(),
        "protocols": lambda: sorted(PROTOCOLS),
        "families": lambda: sorted(known_families()),
        "architectures": lambda: MODELS.names(),
        "validators": lambda: VALIDATORS.names(),
        "variants": lambda: sorted(VARIANTS),
    }[kind]()
    return ", ".join(listed)
