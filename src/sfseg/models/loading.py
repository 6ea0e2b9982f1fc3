"""Loading any checkpoint by path: an sfseg checkpoint as it is, another project's through the importers
(:mod:`sfseg.models.foreign`). This module sits above both, so neither imports the other's caller."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sfseg.data.classes import ClassProtocol, get_protocol
from sfseg.data.normalization import Normalization
from sfseg.data.registry import dataset_protocol
from sfseg.errors import CheckpointError, ConfigError
from sfseg.models.checkpoint import (
    FORMAT,
    Checkpoint,
    InferenceSettings,
    check_finite,
    read_tensors,
)
from sfseg.models.foreign import import_payload
from sfseg.models.registry import create_model
from sfseg.registry import DATASETS, MODELS
from sfseg.yaml_io import brief


def load_checkpoint(
    path: str | Path, family: str = "", classes: str = "", root: str | Path | None = None
) -> Checkpoint:
    """Load an sfseg checkpoint, or import a community DeepLab-v2 checkpoint transparently.

    Args:
        path: the file.
        family: for a foreign file, its family when the keys cannot tell (see :mod:`sfseg.models.foreign`).
        classes: for a foreign file, the class protocol name (needed when it has no head, else checked).
        root: the run directory the file belongs to (no link is followed below it).
    """
    path = Path(path)
    payload = read_tensors(path, root)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        ckpt = import_payload(payload, path, family, get_protocol(classes) if classes else None)
        unused = ckpt.provenance["unused_keys"]
        print(
            f"{path}: imported as {ckpt.provenance['family']} (predicting head: "
            f"{ckpt.provenance['predicting_head']}; {len(unused)} unused keys"
            f"{': ' + ', '.join(unused[:6]) + (' ...' if len(unused) > 6 else '') if unused else ''})"
        )
        return ckpt
    try:
        ckpt = Checkpoint(
            arch=payload["arch"],
            arch_kwargs=payload["arch_kwargs"],
            class_names=payload["class_names"],
            normalization=Normalization.from_dict(payload["normalization"]),
            state_dict=payload["state_dict"],
            provenance=payload["provenance"],
            inference=InferenceSettings.from_dict(payload.get("inference")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: an sfseg checkpoint with damaged metadata ({type(e).__name__}: {brief(str(e))})"
        ) from None
    if not isinstance(ckpt.arch_kwargs, dict) or not isinstance(ckpt.state_dict, dict):
        raise CheckpointError(f"{path}: an sfseg checkpoint with damaged metadata (arch_kwargs, state_dict)")
    check_finite(ckpt.state_dict, str(path))
    ckpt.provenance = {**ckpt.provenance, "path": str(path)}
    if ckpt.arch not in MODELS:
        raise CheckpointError(
            f"{path}: an sfseg checkpoint of architecture {ckpt.arch!r}, which this installation does not "
            f"have (registered: {MODELS.names()}); is a plugin missing (SFSEG_PLUGINS)?"
        )
    ckpt.check_head(str(path))
    return ckpt


def load_for_data(
    path: str | Path, dataset: str, protocol: str = "", family: str = "", where: str | Path = ""
) -> tuple[Checkpoint, ClassProtocol]:
    """A checkpoint and the class protocol of the data it will read, checked against each other.

    The protocol is the one named, else the dataset's own, else (a dataset without one: a folder of
    images) the checkpoint's classes, so that any model works on a folder without another key.
    """
    DATASETS.check(dataset)
    if protocol or DATASETS.meta(dataset)["protocol"] is not None:
        proto = dataset_protocol(dataset, protocol)
        ckpt = load_checkpoint(path, family=family, classes=proto.name)
    else:
        ckpt = load_checkpoint(path, family=family)
        proto = dataset_protocol(dataset, classes=ckpt.class_names)
    ckpt.check_classes(proto.names, str(where or path))
    return ckpt, proto


def network_from_init(init: Checkpoint, arch: str, arch_kwargs: dict, where: str = "") -> nn.Module:
    """The network trained from an initialisation: the init's own, or, when ``arch`` is the same
    architecture with options of its own (``arch_kwargs`` over the init's: LoRA on an imported DINOv2,
    another head depth), that network with every weight of the init that fits. Parameters the init cannot
    have (LoRA's, a new head's) keep their initialisation; a backbone weight that does not fit is an
    error naming ``where`` (the init's path)."""
    if arch != init.arch or not arch_kwargs:
        return init.build()
    kwargs = {**init.arch_kwargs, **arch_kwargs}
    model = create_model(init.arch, init.num_classes, **kwargs)
    reference = model.state_dict()
    new_head = str(init.provenance.get("predicting_head", "")).startswith("new")
    weights, skipped = {}, []
    for k, v in init.state_dict.items():
        if k in reference and reference[k].shape == v.shape:
            weights[k] = v
        elif new_head and k.startswith("decode_head."):
            skipped.append(k)
        else:
            where = init.provenance.get("path", where)
            raise ConfigError(f"{where}: {k} does not fit {init.arch} with arch_kwargs {kwargs}")
    model.load_state_dict(weights, strict=False)
    return model
