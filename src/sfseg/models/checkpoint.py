"""Checkpoints that carry their own metadata: architecture, classes, normalisation and provenance.

A user who finds a ``.pt`` file from sfseg can tell what it predicts, how to feed it and where it came
from (recipe, source-val mIoU, code version) without any side file — the first complaint of users of
the research codes is that this information is lost.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import sfseg
from sfseg.data.normalization import Normalization
from sfseg.models.registry import create_model

FORMAT = "sfseg-checkpoint-v1"


@dataclass
class Checkpoint:
    """A model plus everything needed to use it.

    Attributes:
        arch: registered architecture name.
        arch_kwargs: options passed to :func:`create_model`.
        class_names: output channel ``i`` predicts ``class_names[i]``.
        normalization: input normalisation the weights expect.
        state_dict: the weights.
        provenance: how the weights were made (recipe, scores, code version, parent checkpoint ...).
    """

    arch: str
    arch_kwargs: dict
    class_names: list[str]
    normalization: Normalization
    state_dict: dict[str, torch.Tensor]
    provenance: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build(self) -> nn.Module:
        model = create_model(self.arch, self.num_classes, **self.arch_kwargs)
        model.load_state_dict(self.state_dict)
        return model

    def check_classes(self, class_names: list[str] | tuple[str, ...], where: str) -> None:
        """Raise if this checkpoint's classes differ from those of the data at ``where``."""
        if list(class_names) != list(self.class_names):
            raise ValueError(
                f"class mismatch: the checkpoint predicts {self.num_classes} classes "
                f"{list(self.class_names)}, "
                f"but the data at {where} has {len(class_names)} classes {list(class_names)}. "
                "Use a checkpoint trained for this class protocol, or select the matching protocol."
            )


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    arch_kwargs: dict,
    class_names: list[str] | tuple[str, ...],
    normalization: Normalization,
    provenance: dict | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = {"code_version": sfseg.__version__, "created": _dt.datetime.now().isoformat(timespec="seconds")}
    prov.update(provenance or {})
    payload = {
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "class_names": list(class_names),
        "normalization": normalization.to_dict(),
        "provenance": prov,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    # Write to a temporary name first so that an interrupted save never leaves a truncated checkpoint.
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


class CheckpointFormatError(ValueError):
    """A file whose format is not one of the known checkpoint families."""


def read_tensors(path: str | Path):
    """``torch.load`` with ``weights_only=True`` (never unpickles code), with errors that say what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises several types for non-tensor pickles)
        raise CheckpointFormatError(
            f"{path}: cannot be read as tensors only ({type(e).__name__}). It holds other Python objects "
            "(e.g. ProDA's NumPy scalar); if you trust the file, load it yourself and save its state dict "
            "with torch.save(state_dict, ...)."
        ) from e


def load_checkpoint(path: str | Path, family: str = "", classes: str = "") -> Checkpoint:
    """Load an sfseg checkpoint, or import a community DeepLab-v2 checkpoint transparently.

    Args:
        path: the file.
        family: for a foreign file, its family when the keys cannot tell (see :mod:`sfseg.models.foreign`).
        classes: for a foreign file, the class protocol name (needed when it has no head, else checked).
    """
    path = Path(path)
    payload = read_tensors(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        # A cycle (foreign builds Checkpoint objects) makes this import local.
        from sfseg.data.classes import get_protocol
        from sfseg.models.foreign import import_payload

        ckpt = import_payload(payload, path, family, get_protocol(classes) if classes else None)
        unused = ckpt.provenance["unused_keys"]
        print(
            f"{path}: imported as {ckpt.provenance['family']} (predicting head: "
            f"{ckpt.provenance['predicting_head']}; {len(unused)} unused keys"
            f"{': ' + ', '.join(unused[:6]) + (' ...' if len(unused) > 6 else '') if unused else ''})"
        )
        return ckpt
    return Checkpoint(
        arch=payload["arch"],
        arch_kwargs=payload["arch_kwargs"],
        class_names=payload["class_names"],
        normalization=Normalization.from_dict(payload["normalization"]),
        state_dict=payload["state_dict"],
        provenance=payload["provenance"],
    )
