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
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sfseg.data.classes import ClassProtocol
from sfseg.data.normalization import Normalization
from sfseg.data.transforms import resize_image
from sfseg.models.ops import upsample_logits

FORMATS = ("cityscapes", "trainid")


def export_prediction(pred: np.ndarray, path: Path, protocol: ClassProtocol, fmt: str) -> Path:
    """Write one (H, W) map of class indices as ``fmt``: Cityscapes labelIds (mode L) or trainIds
    (palette PNG, the index is the class)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "cityscapes":
        ids = np.asarray(protocol.label_ids(), dtype=np.uint8)[pred]
        Image.fromarray(ids, mode="L").save(path)
    elif fmt == "trainid":
        im = Image.fromarray(pred.astype(np.uint8), mode="P")
        im.putpalette(protocol.palette())
        im.save(path)
    else:
        raise ValueError(f"unknown prediction format {fmt!r}; formats: {list(FORMATS)}")
    return path


def output_name(name: str, fmt: str) -> str:
    """``frankfurt/frankfurt_000000_000294_leftImg8bit.png`` -> ``..._pred_labelIds.png`` (or ``_pred``)."""
    stem = Path(name).with_suffix("")
    base = str(stem).removesuffix("_leftImg8bit")
    return f"{base}_pred_labelIds.png" if fmt == "cityscapes" else f"{base}_pred.png"


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    normalization: Normalization,
    protocol: ClassProtocol,
    out: str | Path,
    fmt: str = "cityscapes",
    input_size: list[int] | tuple[int, int] = (),
    batch_size: int = 1,
    progress: bool = True,
) -> list[Path]:
    """Predict every image of ``dataset`` (eval mode, single scale, no flip) and write one PNG each at the
    image's own resolution. Returns the paths written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown prediction format {fmt!r}; formats: {list(FORMATS)}")
    model.eval()
    out = Path(out)
    written = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="predict", disable=not progress):
        images = batch["image"]
        x = normalization(resize_image(images, tuple(input_size)) if input_size else images)
        pred = upsample_logits(model(x), images.shape[-2:]).argmax(1).to(torch.uint8).numpy()
        for i, p in zip(batch["index"].tolist(), pred):
            written.append(export_prediction(p, out / output_name(dataset.names[i], fmt), protocol, fmt))
    return written
