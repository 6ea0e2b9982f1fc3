"""Writing predictions: Cityscapes labelId PNGs for the official evaluation, or trainId PNGs.

``--format cityscapes`` writes, for every image, an 8-bit PNG of Cityscapes labelIds at the image's full
resolution (2048 x 1024 for Cityscapes), named ``<city>/<city>_<seq>_<frame>_pred_labelIds.png``, which
``cityscapesscripts``' ``evalPixelLevelSemanticLabeling`` matches to its ground truth by the
``<city>_<seq>_<frame>`` prefix. For a model of the 19 classes its class IoUs equal ours (a test checks it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from sfseg.data.classes import ClassProtocol
from sfseg.data.file_dataset import check_relative
from sfseg.engine.evaluation.inference import Inference, batch_size_hw
from sfseg.engine.evaluation.overlay import overlay
from sfseg.engine.runtime.loading import sharded_loader
from sfseg.fileio import atomic_write_bytes
from sfseg.models.ops import argmax_classes

FORMATS = ("cityscapes", "trainid")


def export_prediction(pred: np.ndarray, path: Path, protocol: ClassProtocol, fmt: str) -> Path:
    """Write one (H, W) map of class indices as ``fmt``: Cityscapes labelIds (mode L) or trainIds
    (palette PNG, the index is the class)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "cityscapes":
        im = Image.fromarray(np.asarray(protocol.label_ids(), dtype=np.uint8)[pred], mode="L")
    elif fmt == "trainid":
        im = Image.fromarray(pred.astype(np.uint8), mode="P")
        im.putpalette(protocol.palette())
    else:
        raise ValueError(f"unknown prediction format {fmt!r}; formats: {list(FORMATS)}")
    atomic_write_bytes(path, lambda p: im.save(p, "PNG"))  # never through a link planted at its name
    return path


def output_name(name: str, fmt: str) -> str:
    """``frankfurt/frankfurt_000000_000294_leftImg8bit.png`` -> ``..._pred_labelIds.png`` (``_pred.png``
    for trainIds, ``_overlay.jpg`` for the overlay)."""
    stem = Path(name).with_suffix("")
    base = str(stem).removesuffix("_leftImg8bit")
    suffix = {"cityscapes": "_pred_labelIds.png", "overlay": "_overlay.jpg"}.get(fmt, "_pred.png")
    return base + suffix


def output_path(out: str | Path, name: str, fmt: str) -> Path:
    """Where the prediction of sample ``name`` goes: always inside ``out`` (a name that would leave it,
    absolute or with ``..``, is an error)."""
    return Path(out) / check_relative(output_name(name, fmt), f"the prediction file of sample {name!r}")


@torch.no_grad()
def predict(
    inference: Inference,
    dataset: Dataset,
    protocol: ClassProtocol,
    out: str | Path,
    fmt: str = "cityscapes",
    batch_size: int = 1,
    workers: int = 0,
    progress: bool = True,
    overlays: bool = False,
) -> list[Path]:
    """Predict every image of ``dataset`` (eval mode, single scale, no flip) and write one PNG each at the
    image's own resolution (and, with ``overlays``, ``<name>_overlay.jpg``: the image blended with the
    prediction, with a legend). Returns the paths written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown prediction format {fmt!r}; formats: {list(FORMATS)}")
    inference.model.eval()
    out = Path(out)
    written = []
    for batch in tqdm(
        sharded_loader(inference.view(dataset), batch_size, workers), desc="predict", disable=not progress
    ):
        logits = inference.logits(batch["image"], batch_size_hw(batch))
        names = [dataset.names[i] for i in batch["index"].tolist()]
        inference.check_finite(
            f"image {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
        )
        pred = argmax_classes(logits).to(torch.uint8).cpu().numpy()
        for i, p in zip(batch["index"].tolist(), pred):
            written.append(export_prediction(p, output_path(out, dataset.names[i], fmt), protocol, fmt))
            if overlays:
                picture = overlay(dataset.image(i).permute(1, 2, 0).numpy(), p, protocol)
                path = output_path(out, dataset.names[i], "overlay")
                atomic_write_bytes(path, lambda f, im=picture: im.save(f, "JPEG", quality=90))
                written.append(path)
    return written
