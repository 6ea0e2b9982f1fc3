"""sfseg from Python: load a model and predict, adapt with a recipe, train a source model, export.

Example (the README's "Python" section holds a longer one that a test runs as written)::

    import numpy as np
    from PIL import Image

    import sfseg

    model = sfseg.load_model(sfseg.DEMO_CHECKPOINT)              # any checkpoint sfseg reads
    image = Image.fromarray(np.zeros((64, 128, 3), np.uint8))    # or a (H, W, 3) uint8 array, or a tensor
    labels = model.predict(image)                                # (64, 128) class indices
    print(model.classes[labels[0, 0]])

    overrides = ["checkpoint=model.pt", "data.dataset=folder", "data.root=my_images"]
    run = sfseg.run_adaptation("toycity/ld", overrides)
    print(run.summary["selected"], run.model().predict(image).shape)

The command line (``sfseg adapt``, ``train-source``, ``export``) is a thin layer over these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from sfseg.config import load_config
from sfseg.data.classes import ClassProtocol
from sfseg.engine.evaluation.export import OPSET
from sfseg.engine.evaluation.export import export_model as _export
from sfseg.engine.evaluation.inference import Inference, pil_resize
from sfseg.engine.experiments.demo import SHIPPED_SOURCE
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.training.recipe import AdaptConfig, SourceConfig
from sfseg.engine.training.source import source_run_dir
from sfseg.engine.training.source import train_source as _train_source
from sfseg.engine.training.stages import run_adaptation as _run_adaptation
from sfseg.errors import ConfigError, ResumeError
from sfseg.models import Checkpoint, load_checkpoint
from sfseg.models.ops import argmax_classes

DEMO_CHECKPOINT = SHIPPED_SOURCE
"""The shipped ToyCity source model (a DeepLab-style CNN of 12 classes), for examples and tests."""

ImageLike = Image.Image | np.ndarray | torch.Tensor


@dataclass
class Model:
    """A checkpoint ready to predict, the way it was scored (its stored inference settings)."""

    checkpoint: Checkpoint
    inference: Inference

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.checkpoint.class_names)

    @property
    def protocol(self) -> ClassProtocol:
        return self.checkpoint.protocol()

    @torch.no_grad()
    def logits(self, image: ImageLike) -> torch.Tensor:
        """Float32 logits at the image's size: (C, H, W) for one image, (B, C, H, W) for a batch tensor."""
        images, single = _as_uint8_batch(image)
        settings = self.inference
        if settings.resize == "pil" and settings.input_size:
            images = torch.stack([pil_resize(im, settings.input_size) for im in images])
        self.inference.model.eval()
        logits = self.inference.logits(images, tuple(_hw(image, single)))
        self.inference.check_finite("the image")
        return logits[0].cpu() if single else logits.cpu()

    def predict(self, image: ImageLike) -> np.ndarray | torch.Tensor:
        """Class indices at the image's size: (H, W) uint8, or (B, H, W) for a batch tensor; a NumPy
        array for a PIL image or an array, a tensor for a tensor. The same pixels as ``sfseg predict``."""
        logits = self.logits(image)
        labels = argmax_classes(logits if logits.dim() == 4 else logits[None]).to(torch.uint8)
        labels = labels if logits.dim() == 4 else labels[0]
        return labels if isinstance(image, torch.Tensor) else labels.numpy()

    def export(self, path: str | Path, format: str = "onnx", opset: int = OPSET) -> dict:
        """Write the model for deployment (see :func:`export_model`); returns the sidecar."""
        return _export(self.checkpoint, path, format, opset)


def _as_uint8_batch(image: ImageLike) -> tuple[torch.Tensor, bool]:
    """(B, 3, H, W) uint8 RGB and whether a single image was given."""
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)[None], True
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ConfigError(
                f"an image array must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype} "
                "(np.asarray(PIL.Image.open(path).convert('RGB')) gives one)"
            )
        return torch.from_numpy(np.array(image, order="C")).permute(2, 0, 1)[None], True  # a copy
    if isinstance(image, torch.Tensor):
        single = image.dim() == 3
        x = image[None] if single else image
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"an image tensor must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
        if x.is_floating_point():
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)  # floats in [0, 1], as torchvision's
        elif x.dtype != torch.uint8:
            raise ConfigError(f"an image tensor must be uint8 (0-255) or float (0-1), got {x.dtype}")
        return x.cpu(), single
    raise ConfigError(f"predict takes a PIL image, a NumPy array or a tensor, not {type(image).__name__}")


def _hw(image: ImageLike, single: bool) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray):
        return image.shape[0], image.shape[1]
    return tuple(image.shape[-2:])


def load_model(
    path: str | Path, family: str = "", classes: str = "", device: str | torch.device = "cpu"
) -> Model:
    """Load any checkpoint sfseg reads (its own, or a community DeepLab-v2/SegFormer/DAFormer/DINOv2 file
    through the importers: ``family`` and ``classes`` as for ``sfseg import-checkpoint``)."""
    ckpt = load_checkpoint(path, family=family, classes=classes)
    network = ckpt.build().to(torch.device(device)).eval()
    return Model(ckpt, Inference.from_settings(network, ckpt.normalization, ckpt.inference))


@dataclass
class Run:
    """A finished adaptation run: its directory, recipe, summary and models."""

    path: Path
    config: AdaptConfig
    summary: dict

    @property
    def final(self) -> Path:
        """The last round's model."""
        return RunDir(self.path).final

    @property
    def selected(self) -> Path | None:
        """The model the label-free validator chose, when the run had one."""
        path = RunDir(self.path).selected
        return path if path.is_file() else None

    @property
    def miou(self) -> float | None:
        """The final model's target-val mIoU, where the target has labels."""
        return self.summary["final"]["miou"] if self.summary.get("final") else None

    def model(self, which: Literal["auto", "final", "selected"] = "auto", device: str = "cpu") -> Model:
        """The run's model: ``selected`` (the validator's choice), ``final``, or ``auto``: the selected one
        when the run scored its rounds without target labels, else the final one."""
        if which == "auto":
            which = "selected" if self.selected and not self.summary.get("final") else "final"
        path = self.selected if which == "selected" else self.final
        if path is None:
            raise ConfigError(f"{self.path} has no selected.pt (its recipe names no select.validator)")
        return load_model(path, device=device)


def run_adaptation(
    recipe: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Run:
    """Adapt a model with a recipe: a shipped one by name (``toycity/ld``, ``gta5_to_cityscapes/ldbe``) or
    a YAML file, with ``key=value`` overrides (``checkpoint=...``, ``data.root=...``, ``rounds=1``).

    Args:
        resume: a run directory to continue from its last saved state (its own recipe when ``recipe`` is
            None).
        overwrite: clear an earlier run in the recipe's ``out`` first (otherwise that is an error).
    """
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other")
    if resume:
        run = RunDir(resume)
        saved = run.check(run.config)
        if recipe is None and not saved.is_file():
            if run.state.is_file():
                raise ResumeError(
                    f"{saved} is missing, but the run's state is there: restore config.yaml, or name the "
                    f"run's recipe (sfseg adapt --resume {resume} --config <its recipe>); the state refuses "
                    "any other"
                )
            raise ResumeError(f"{resume} holds no run to resume (no {saved.name})")
        cfg = load_config(AdaptConfig, recipe or saved, [*overrides, f"out={resume}"])
        mode = "resume"
    else:
        if recipe is None:
            raise ConfigError("name a recipe (e.g. toycity/ld, or a YAML file), or a run to resume")
        cfg = load_config(AdaptConfig, recipe, list(overrides))
        mode = "overwrite" if overwrite else "new"
    summary = _run_adaptation(cfg, progress=progress, mode=mode)
    return Run(Path(cfg.out), cfg, summary)


def train_source(
    recipe: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train a source model (stage 0) with a recipe (``toycity/source``, a YAML file) and overrides;
    returns its summary (``checkpoint``: the file written, ``val_miou``). ``resume``: the run directory
    of a killed run (``out`` without its suffix)."""
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other")
    if resume:
        run = RunDir(resume)
        if not run.check(run.config).is_file():
            raise ConfigError(f"{resume} holds no source run to resume (no {run.CONFIG})")
        cfg = load_config(SourceConfig, recipe or run.config, list(overrides))
        if source_run_dir(cfg.out).path.resolve() != run.path.resolve():
            raise ConfigError(f"{resume} is not the run directory of out={cfg.out}; give that run's folder")
        mode = "resume"
    else:
        if recipe is None:
            raise ConfigError("name a recipe (e.g. toycity/source, or a YAML file), or a run to resume")
        cfg = load_config(SourceConfig, recipe, list(overrides))
        mode = "overwrite" if overwrite else "new"
    return {**_train_source(cfg, progress=progress, mode=mode), "dataset": cfg.data.dataset}


def export_model(
    checkpoint: str | Path, out: str | Path, format: str = "onnx", opset: int = OPSET, family: str = ""
) -> dict:
    """Export a checkpoint for deployment (ONNX: normalised images in, logits and labels out), with
    ``<out>.json`` beside it (normalisation, input size, classes); returns that sidecar."""
    return _export(load_checkpoint(checkpoint, family=family), out, format, opset)
