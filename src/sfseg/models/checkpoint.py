"""Checkpoints that carry their own metadata: architecture, classes, normalisation and provenance.

A user who finds a ``.pt`` file from sfseg can tell what it predicts, how to feed it and where it came
from (recipe, source-val mIoU, code version) without any side file — the first complaint of users of
the research codes is that this information is lost.
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from sfseg.config import MAX_SIDE
from sfseg.constants import VERSION
from sfseg.data.classes import PROTOCOLS, ClassProtocol, protocol_of
from sfseg.data.normalization import Normalization
from sfseg.errors import CheckpointError, RunDirError
from sfseg.fileio import atomic_torch_save, open_file
from sfseg.models.registry import create_model, model_hooks
from sfseg.registry import MODELS
from sfseg.yaml_io import brief

FORMAT = "sfseg-checkpoint-v1"


@dataclass(frozen=True)
class InferenceSettings:
    """How a model's outputs were produced when it was trained and scored: ``sfseg eval`` and ``predict``
    use them unless told otherwise, so they reproduce the score a run reported.

    Attributes:
        input_size: ``(width, height)`` the images are resized to before the network; empty = native.
        resize: ``torch`` (bicubic on the device) or ``pil`` (PIL bicubic, as the released LDBE code).
        align_corners: bilinear upsampling of logits with ``align_corners=True``.
        upsample: ``direct`` or ``two_step`` (to the input size first, then to the label resolution).
        channels_last: channels-last memory layout (on CPUs it changes logits by up to ~1e-2).
        amp: bfloat16 autocast.
    """

    input_size: tuple[int, ...] = ()
    resize: str = "torch"
    align_corners: bool = False
    upsample: str = "direct"
    channels_last: bool = False
    amp: bool = False

    def to_dict(self) -> dict:
        return {**asdict(self), "input_size": list(self.input_size)}

    @classmethod
    def from_dict(cls, d: dict | None) -> InferenceSettings:
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown inference settings {unknown}")
        if "input_size" in d:
            size = d["input_size"] or ()
            if not isinstance(size, list | tuple) or len(size) not in (0, 2):
                raise ValueError(f"input_size {brief(size)} is not [width, height]")
            if any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE for v in size):
                raise ValueError(f"input_size {brief(size)}: sides must be integers in 1..{MAX_SIDE}")
            d["input_size"] = tuple(size)
        for key in ("align_corners", "channels_last", "amp"):
            if key in d and not isinstance(d[key], bool):
                raise ValueError(f"{key} {brief(d[key])} is not true or false")
        settings = cls(**d)
        if settings.resize not in ("torch", "pil") or settings.upsample not in ("direct", "two_step"):
            raise ValueError(f"inference settings {brief(d)} hold an unknown resize or upsample mode")
        return settings


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
        inference: how the model was run when it was scored (sizes, resizing, upsampling, memory layout).
    """

    arch: str
    arch_kwargs: dict
    class_names: list[str]
    normalization: Normalization
    state_dict: dict[str, torch.Tensor]
    provenance: dict = field(default_factory=dict)
    inference: InferenceSettings = field(default_factory=InferenceSettings)

    @classmethod
    def of(
        cls,
        model: nn.Module,
        class_names: list[str] | tuple[str, ...],
        normalization: Normalization,
        inference: InferenceSettings | None = None,
        provenance: dict | None = None,
    ) -> Checkpoint:
        """The checkpoint of a live model built by :func:`create_model` (unwrapped: no DDP)."""
        return cls(
            arch=model.arch,
            arch_kwargs=dict(model.arch_kwargs),
            class_names=list(class_names),
            normalization=normalization,
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            provenance=dict(provenance or {}),
            inference=inference or InferenceSettings(),
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def protocol(self) -> ClassProtocol:
        """The class protocol of this checkpoint's classes (a known one when the names match)."""
        return protocol_of(self.class_names)

    def save(self, path: str | Path, root: str | Path | None = None) -> Path:
        """Write the checkpoint atomically (the one way sfseg writes one); its provenance gains the code
        version and the time. Weights holding NaN or infinite values are refused. ``root``: the run
        directory the file belongs to (no link is followed below it)."""
        check_finite(self.state_dict, str(path))
        path = Path(path)
        prov = {
            "code_version": VERSION,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
        }
        prov.update({k: v for k, v in self.provenance.items() if k != "path"})
        payload = {
            "format": FORMAT,
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs),
            "class_names": list(self.class_names),
            "normalization": self.normalization.to_dict(),
            "inference": self.inference.to_dict(),
            "provenance": prov,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict.items()},
        }
        # An interrupted or failed save never leaves a truncated checkpoint (nor a temporary file).
        atomic_torch_save(payload, path, root)
        return path

    def build(self) -> nn.Module:
        """The network with these weights.

        Raises:
            CheckpointError: when the weights do not fit the declared architecture and classes.
        """
        where = self.provenance.get("path", "checkpoint")
        model = create_model(self.arch, self.num_classes, **self.arch_kwargs)
        check_dtypes(self.state_dict, model.state_dict(), where)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            self.check_head(where)
            lines = [ln.strip() for ln in str(e).splitlines()[1:4]]
            raise CheckpointError(
                f"{where}: its weights do not fit {self.arch} {self.arch_kwargs}: {' '.join(lines)}"
            ) from None
        return model

    def check_head(self, where: str) -> None:
        """Raise if the head's output count (the architecture's ``classes_key`` hook) differs from the
        number of class names the file declares."""
        head = head_classes(self.arch, self.state_dict)
        if head is not None and head != self.num_classes:
            raise CheckpointError(
                f"{where}: its head predicts {head} classes but it declares {self.num_classes} class names "
                f"{self.class_names}; the file's metadata and weights disagree (re-export it)"
            )

    def check_classes(self, class_names: list[str] | tuple[str, ...], where: str) -> None:
        """Raise if this checkpoint's classes differ from those of the data at ``where``."""
        if list(class_names) != list(self.class_names):
            raise CheckpointError(
                f"class mismatch: the checkpoint predicts {self.num_classes} classes "
                f"{list(self.class_names)}, "
                f"but the data at {where} has {len(class_names)} classes {list(class_names)}. "
                "Use a checkpoint trained for these classes, or name the data's class protocol: "
                "data.protocol=<name> in a recipe or override, --protocol on sfseg eval/predict "
                f"(protocols with {self.num_classes} classes: {_protocols_with(self.num_classes)})"
            )


def _protocols_with(num_classes: int) -> list[str]:
    return sorted(n for n, p in PROTOCOLS.items() if p.num_classes == num_classes) or ["none known"]


class CheckpointFormatError(CheckpointError):
    """A file whose format is not one of the known checkpoint families."""


def check_dtypes(weights: dict, reference: dict[str, torch.Tensor], where: str) -> None:
    """Refuse a tensor whose kind (floating point or integer) differs from the network's at that key:
    loading integer weights would silently round them into the network's floats (and the reverse would
    truncate BatchNorm counters)."""
    for k, r in reference.items():
        v = weights.get(k)
        if v is None:
            continue
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{where}: {k!r} holds a {type(v).__name__}, not a tensor")
        if v.is_floating_point() != r.is_floating_point() or v.is_complex():
            want = "floating-point" if r.is_floating_point() else "integer"
            raise CheckpointError(
                f"{where}: tensor {k!r} is {str(v.dtype).removeprefix('torch.')}, but the network holds "
                f"{want} values there: the file is damaged or was written by other code"
            )


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite(sd: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or infinite values (a diverged model, or a damaged file)."""
    bad = first_non_finite(sd)
    if bad is not None:
        raise CheckpointError(
            f"{where}: tensor {bad!r} holds NaN or infinite values: the model diverged or the file is "
            "damaged. Use an earlier checkpoint (round_<r>.pt of the run, or the source model)"
        )


def head_classes(arch: str, sd: dict) -> int | None:
    """The class count the weights' head predicts (from the architecture's ``classes_key`` hook)."""
    if arch not in MODELS:
        return None
    key = model_hooks(arch).classes_key
    t = sd.get(key) if key else None
    return int(t.shape[0]) if isinstance(t, torch.Tensor) and t.ndim else None


MAX_TENSOR_ELEMENTS = 2**32
"""The most elements one tensor of a file may have (16 GiB of float32): more is a damaged or hostile file."""


def read_tensors(path: str | Path, root: str | Path | None = None):
    """``torch.load`` with ``weights_only=True`` (never unpickles code), with errors that say what is wrong,
    and every tensor's size checked against the memory the file actually holds (:func:`check_sizes`)
    before anything computes with it. The file is opened as a regular file (a FIFO is refused, never read
    from); ``root``: the run directory it belongs to (no link is followed below it).

    Raises:
        CheckpointError: the file is missing, empty, truncated or corrupt, not a PyTorch file, holds
            Python objects other than tensors (which sfseg never unpickles), or tensors whose shapes claim
            more memory than the file holds.
    """
    path = Path(path)
    try:
        f = open_file(path, "rb", root)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except RunDirError as e:
        raise CheckpointError(f"checkpoint {e}") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a directory, not a file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CheckpointError(f"{path}: the checkpoint file is empty (an interrupted copy or download?)")
        head = f.read(4)
        payload = _load(f, path, head)
    check_sizes(payload, str(path))
    return payload


def _load(f, path: Path, head: bytes):
    try:
        try:
            f.seek(0)
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "numpy" not in str(e):
                raise
            # NumPy scalars and dtypes (ProDA stores an iteration counter as one) are plain data; allowing
            # them keeps the load weights-only: nothing else is unpickled.
            f.seek(0)
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
                return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text or "weights_only" in text:
            culprit = re.search(r"(GLOBAL|global) ([\w.]+)", text)
            what = f" ({culprit.group(2)})" if culprit else ""
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors{what}. sfseg reads checkpoints without "
                "unpickling code, so it cannot read this file; export its state dict (tensors only) with the "
                "code that wrote it"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_kind(head)}): {text[:120]}") from None
    except Exception as e:  # noqa: BLE001  (torch raises many types for a damaged or foreign file)
        if head[:2] == b"PK":
            raise CheckpointError(
                f"{path}: the checkpoint is truncated or corrupt ({' '.join(str(e).split())[:160]}); copy or "
                "download it again"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_kind(head)})") from None


def check_sizes(payload, where: str) -> None:
    """Refuse tensors whose shape claims more elements than their storage holds (zero strides, a view
    beyond its data) or more than :data:`MAX_TENSOR_ELEMENTS`: such a tensor costs nothing to load but
    any computation on it (a finiteness check, a copy) would allocate its full claimed size."""
    stack = [("", payload)]
    while stack:
        name, x = stack.pop()
        if isinstance(x, dict):
            stack += [(f"{name}.{k}" if name else str(k), v) for k, v in x.items()]
        elif isinstance(x, list | tuple):
            stack += [(f"{name}[{i}]", v) for i, v in enumerate(x)]
        elif isinstance(x, torch.Tensor):
            stored = x.untyped_storage().nbytes() // max(x.element_size(), 1)
            needed = x.storage_offset() + sum((s - 1) * st for s, st in zip(x.shape, x.stride())) + 1
            n = x.numel()
            if n and (n > MAX_TENSOR_ELEMENTS or n > stored or needed > stored):
                raise CheckpointError(
                    f"{where}: tensor {name!r} claims shape {tuple(x.shape)} ({n:,} elements) over "
                    f"{stored:,} stored elements: a damaged or hostile file; sfseg will not compute with it"
                )


def _numpy_scalar_globals() -> list:
    import numpy as np

    scalar = getattr(np, "_core", np.core).multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [scalar, np.dtype, *dtypes]


def _kind(head: bytes) -> str:
    if head[:4] == b"\x89PNG":
        return "a PNG image"
    if head[:1] == b"\x80":
        return "a legacy pickle that cannot be read: truncated or corrupt"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return "unknown binary contents"
