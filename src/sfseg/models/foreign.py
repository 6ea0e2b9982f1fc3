"""Importing checkpoints of other projects: one dispatcher over the importers each architecture
registers beside itself (``deeplab_v2_import.py`` for the DeepLab-v2 families).

Formats are detected by keys and shapes, never by file name. The ``module.`` (DataParallel/DDP) and
``_orig_mod.`` (torch.compile) prefixes are stripped first; keys not loaded are listed in the imported
checkpoint's provenance.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sfseg.data.classes import PROTOCOLS, ClassProtocol
from sfseg.data.normalization import Normalization
from sfseg.errors import CheckpointError
from sfseg.models.checkpoint import (
    FORMAT,
    Checkpoint,
    CheckpointFormatError,
    check_dtypes,
    check_finite,
    read_tensors,
)
from sfseg.models.registry import create_model, model_hooks
from sfseg.registry import IMPORTERS, MODELS
from sfseg.yaml_io import brief


@dataclass(frozen=True)
class Importer:
    """How to import one project's checkpoint formats.

    Attributes:
        families: format name -> description.
        detect: a cleaned state dict -> its family, a tuple of families it cannot tell apart, or None
            (not one of these formats). It may raise :class:`CheckpointFormatError` for a known but
            unsupported format.
        convert: ``(state dict, family, protocol or None, where) -> Checkpoint``.
        ambiguity: what to say when ``detect`` returns a tuple (keyed by that tuple).
    """

    families: dict[str, str]
    detect: Callable[[dict[str, torch.Tensor]], str | tuple[str, ...] | None]
    convert: Callable[..., Checkpoint]
    ambiguity: dict[tuple[str, ...], str] = field(default_factory=dict)


_NESTED = ("state_dict", "model_state", "model", "ResNet101")


def fitting_weights(
    weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """``weights`` restricted to the keys of ``reference`` (a model's state dict), every shape checked."""
    weights = {k: v for k, v in weights.items() if k in reference}
    check_dtypes(weights, reference, where)
    bad = [k for k, v in weights.items() if v.shape != reference[k].shape]
    if bad:
        raise CheckpointFormatError(
            f"{where}: shape mismatch for {bad[:8]}, e.g. {bad[0]} {tuple(weights[bad[0]].shape)} vs "
            f"{tuple(reference[bad[0]].shape)}"
        )
    return weights


def unwrap_payload(payload, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint file's payload (``state_dict``, ``model_state``, ...)."""
    if isinstance(payload, dict):
        for key in _NESTED:
            if key in payload and isinstance(payload[key], dict):
                return unwrap_payload(payload[key], path)
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            return payload
    seen = sorted(map(str, payload))[:20] if isinstance(payload, dict) else type(payload).__name__
    raise CheckpointFormatError(f"{path}: no state dict found; top-level keys seen: {seen}")


def clean_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    return {re.sub(r"^((module|_orig_mod)\.)+", "", k): v for k, v in sd.items()}


def known_families() -> dict[str, str]:
    return {f: d for _, imp in IMPORTERS.items() for f, d in imp.families.items()}


def _bare_sfseg_state_dict(sd: dict[str, torch.Tensor]) -> str | None:
    """The architecture of an sfseg model saved as a bare state dict (no metadata), if it is one."""
    for name in MODELS.names():
        keys = model_hooks(name).signature_keys
        if keys and all(k in sd for k in keys):
            return name
    return None


def imported_class_names(head_weight, protocol: ClassProtocol | None, what: str, where: str) -> list[str]:
    """The class names of an imported file: as many as its head's outputs, or, for a file without a head
    (a backbone), those of the protocol the user named."""
    if head_weight is not None:
        num_classes = int(head_weight.shape[0])
    elif protocol is None:
        raise CheckpointFormatError(f"{where}: a {what} file has no segmentation head; say which classes")
    else:
        num_classes = protocol.num_classes
    return class_names_for(num_classes, protocol, where)


def class_names_for(num_classes: int, protocol: ClassProtocol | None, where: str) -> list[str]:
    """The class names of a head with ``num_classes`` outputs: the protocol's (checked), or the one protocol
    of that size."""
    how = "data.protocol=<name> in a recipe, --protocol (or --classes) <name> on the command line"
    if protocol is not None:
        if protocol.num_classes != num_classes:
            raise CheckpointError(
                f"{where}: the checkpoint predicts {num_classes} classes but protocol {protocol.name} has "
                f"{protocol.num_classes}; name the matching protocol ({how}: e.g. synthia16 for 16 classes, "
                "cityscapes19 for 19)"
            )
        return list(protocol.names)
    matches = [p for p in PROTOCOLS.values() if p.num_classes == num_classes]
    if len(matches) != 1:
        known = [p.name for p in matches] or "none known"
        raise CheckpointError(f"{where}: {num_classes} output classes; say which protocol ({how}; {known})")
    return list(matches[0].names)


def load_converted(
    arch: str,
    arch_kwargs: dict,
    weights: dict[str, torch.Tensor],
    class_names: list[str],
    normalization: Normalization,
    where: str,
    family: str,
    description: str,
    unused: list[str],
    new_head: str = "",
) -> Checkpoint:
    """Build ``arch`` and load converted ``weights`` into it strictly: every parameter must come from the
    file, except BatchNorm counters (filled with zeros) and, for files without a head, the parameters under
    ``new_head`` (kept at their initialisation). Keys that do not belong to the network join ``unused``.

    Returns:
        the checkpoint, its provenance naming the family and listing every unused key.
    """
    model = create_model(arch, len(class_names), **arch_kwargs)
    reference = model.state_dict()
    weights = dict(weights)
    filled = 0
    for k, v in reference.items():
        if k in weights:
            continue
        if k.endswith("num_batches_tracked"):
            weights[k], filled = torch.zeros_like(v), filled + 1
        elif new_head and k.startswith(new_head):
            weights[k] = v
    missing = sorted(set(reference) - set(weights))
    if missing:
        raise CheckpointFormatError(
            f"{where}: read as {description}, but {len(missing)} keys of {arch} {arch_kwargs} are missing, "
            f"e.g. {missing[:8]}"
        )
    unused = sorted(set(unused) | {k for k in weights if k not in reference})
    model.load_state_dict(fitting_weights(weights, reference, where), strict=True)
    return Checkpoint.of(
        model,
        class_names,
        normalization,
        provenance={
            "stage": "import",
            "imported_from": where,
            "family": family,
            "predicting_head": "new (initialised)" if new_head else "imported",
            "unused_keys": unused,
            "filled_num_batches_tracked": filled,
        },
    )


def import_state_dict(
    sd: dict[str, torch.Tensor],
    family: str = "",
    protocol: ClassProtocol | None = None,
    where: str = "state dict",
) -> Checkpoint:
    """Detect (or take) the format of ``sd`` and return it as an sfseg :class:`Checkpoint`.

    Args:
        sd: the foreign state dict.
        family: a format name (see :func:`known_families`) to skip detection (required when keys are
            ambiguous).
        protocol: the class protocol (required for files without a usable head; checked otherwise).
        where: a name for messages (the file).
    """
    sd = clean_state_dict(sd)
    if family:
        owner = next((imp for _, imp in IMPORTERS.items() if family in imp.families), None)
        if owner is None:
            raise CheckpointError(f"unknown checkpoint family {family!r}; known: {sorted(known_families())}")
        try:
            return owner.convert(sd, family, protocol, where)
        except (KeyError, IndexError, TypeError, AttributeError, RuntimeError) as e:
            detail = f"key {e.args[0]!r} is missing" if isinstance(e, KeyError) else brief(str(e))
            raise CheckpointFormatError(
                f"{where}: read as family {family!r} ({owner.families[family]}), but {detail}: the file is "
                f"not of that family. Omit the family for sfseg to detect it (keys: {sorted(sd)[:8]} ...)"
            ) from None
    for _, imp in IMPORTERS.items():
        try:
            found = imp.detect(sd)
        except CheckpointFormatError as e:
            raise CheckpointFormatError(f"{where}: {e}") from None
        if found is None:
            continue
        if isinstance(found, tuple):
            why = imp.ambiguity.get(found, "")
            raise CheckpointFormatError(
                f"{where}: keys and shapes match several families {list(found)} {why}".rstrip()
            )
        return imp.convert(sd, found, protocol, where)
    arch = _bare_sfseg_state_dict(sd)
    if arch is not None:
        raise CheckpointFormatError(
            f"{where}: a bare state dict of sfseg's {arch} (torch.save(model.state_dict())): it has no "
            "metadata (architecture options, classes, normalisation). Save models with "
            "sfseg.models.Checkpoint.of(...).save(path), or use the checkpoint the run wrote (final.pt, "
            "round_<r>.pt)"
        )
    shown = sorted(sd)
    raise CheckpointFormatError(
        f"{where}: unknown checkpoint format ({len(shown)} keys); keys seen: {shown[:12]} ... {shown[-8:]}. "
        f"Known families: {sorted(known_families())}"
    )


def import_payload(
    payload, path: str | Path, family: str = "", protocol: ClassProtocol | None = None
) -> Checkpoint:
    """Import the already-read contents of a foreign checkpoint file (see :func:`import_state_dict`)."""
    ckpt = import_state_dict(unwrap_payload(payload, Path(path)), family, protocol, str(path))
    check_finite(ckpt.state_dict, str(path))
    return ckpt


def import_checkpoint(
    path: str | Path, family: str = "", protocol: ClassProtocol | None = None
) -> Checkpoint:
    """Read a foreign checkpoint file (tensors only; never unpickles code) and import it.

    Raises:
        CheckpointError: the file is already an sfseg checkpoint (nothing to import), or not importable.
    """
    payload = read_tensors(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        raise CheckpointError(
            f"{path} is already an sfseg checkpoint ({payload.get('arch')}, "
            f"{len(payload.get('class_names') or [])} classes): there is nothing to import; use it as it is "
            "(eval, predict, adapt and export read it directly)"
        )
    return import_payload(payload, path, family, protocol)
