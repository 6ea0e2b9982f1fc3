"""Evaluation of a model on a labelled split: logits at label resolution, argmax, confusion matrix."""

from __future__ import annotations

import concurrent.futures as cf
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from sfseg.data.classes import ClassProtocol
from sfseg.data.images import open_image, png_depth
from sfseg.engine.evaluation.inference import Inference, batch_size_hw
from sfseg.engine.evaluation.metrics import ConfusionMatrix
from sfseg.engine.runtime import distributed
from sfseg.engine.runtime.loading import sharded_loader
from sfseg.errors import DatasetError
from sfseg.models.ops import argmax_classes


@torch.no_grad()
def evaluate(
    inference: Inference,
    dataset: Dataset,
    protocol: ClassProtocol,
    batch_size: int = 16,
    workers: int = 0,
    progress: bool = False,
    desc: str = "eval",
    dist: distributed.Dist = distributed.SINGLE,
) -> dict:
    """Single-scale evaluation in eval mode (BN running statistics), no flip.

    Images are resized to the inference's input size when it has one (Cityscapes protocol: 1024 x 512);
    logits are upsampled to the label's resolution before the argmax; labels are never resized. Under
    ``torchrun`` each rank scores whole batches and the confusion matrices are summed.

    Returns:
        the :meth:`ConfusionMatrix.summary` dict (mIoU, per-class IoU, majority/minority mIoU, in %).
    """
    if not getattr(dataset, "has_labels", False):
        raise DatasetError("evaluation needs a labelled split (this split has no label files)")
    model = inference.model
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(protocol.num_classes, inference.device)
    loader = sharded_loader(inference.view(dataset, labels=True), batch_size, workers, dist)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        logits = inference.logits(batch["image"], batch_size_hw(batch))
        cm.update(batch["label"], argmax_classes(logits).to(torch.uint8))
    inference.check_finite(desc, distributed.all_reduce_sum)
    cm.reduce_from_all_processes(distributed.all_reduce_sum)
    model.train(was_training)
    return cm.summary(protocol.names, protocol.majority, protocol.subsets)


class PredictionFiles(Dataset):
    """Pairs of (label, prediction PNG) for a labelled split and a folder written by ``sfseg predict``
    (or any tool writing the same names): ``cityscapes`` format holds Cityscapes labelIds, ``trainid``
    holds class indices."""

    def __init__(self, dataset: Dataset, folder: str | Path, fmt: str, protocol: ClassProtocol):
        from sfseg.engine.evaluation.predict import output_path

        if not getattr(dataset, "has_labels", False):
            raise DatasetError("evaluation needs a labelled split (this split has no label files)")
        self.dataset, self.fmt = dataset, fmt
        self.paths = [output_path(folder, n, fmt) for n in dataset.names]
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} prediction file(s) missing in {folder}, e.g. {missing[0]}; write them with "
                f"sfseg predict --format {fmt}"
            )
        self.lut = np.full(256, 255, dtype=np.uint8)
        if fmt == "cityscapes":
            self.lut[np.asarray(protocol.label_ids())] = np.arange(protocol.num_classes)
        else:
            self.lut[: protocol.num_classes] = np.arange(protocol.num_classes)
        self.num_classes = protocol.num_classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        raw = read_prediction(self.paths[i], self.fmt)
        pred = cv2.LUT(raw, self.lut)
        if (pred == 255).any():
            bad = sorted(set(np.unique(raw[pred == 255]).tolist()))
            raise DatasetError(
                f"{self.paths[i]}: values {bad} are not {self.fmt} ids of this protocol's classes"
            )
        label = self.dataset.label(i)
        if tuple(label.shape) != pred.shape:
            raise DatasetError(
                f"{self.paths[i]}: prediction is {pred.shape[1]}x{pred.shape[0]}, its label "
                f"{label.shape[1]}x{label.shape[0]}"
            )
        return {"label": label, "pred": torch.from_numpy(pred)}


def read_prediction(path: Path, fmt: str) -> np.ndarray:
    """One prediction PNG as (H, W) uint8 ids; anything else (empty, not an image, colour, 16-bit) is an
    error naming the file."""
    fix = f"write predictions with sfseg predict --format {fmt} (one 8-bit id per pixel)"
    try:
        if path.stat().st_size == 0:
            raise DatasetError(f"{path}: the prediction file is empty; {fix}")
        with open_image(path) as im:
            if im.mode not in ("L", "P") or (im.format == "PNG" and png_depth(path) > 8):
                raise DatasetError(f"{path}: the prediction image has mode {im.mode!r}, not 8-bit ids; {fix}")
            return np.asarray(im)
    except DatasetError as e:
        if "cannot be read as an image" in str(e):
            raise DatasetError(f"{path}: cannot be read as a prediction image; {fix}") from None
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DatasetError(
            f"{path}: cannot be read as a prediction image ({type(e).__name__}); {fix}"
        ) from None


def evaluate_files(
    dataset: Dataset,
    folder: str | Path,
    protocol: ClassProtocol,
    fmt: str = "cityscapes",
    workers: int = 0,
    progress: bool = False,
) -> dict:
    """Score prediction PNGs against a labelled split (same numbers as the official cityscapesscripts
    pixel-level evaluation for the 19 classes; tested). Files are decoded on ``workers`` threads (0 = one
    per core)."""
    cm = ConfusionMatrix(protocol.num_classes)
    pairs = PredictionFiles(dataset, folder, fmt, protocol)
    threads = workers or min(8, len(os.sched_getaffinity(0)))
    for item in tqdm(ordered_map(pairs.__getitem__, range(len(pairs)), threads), total=len(pairs),
                     desc="eval (files)", disable=not progress, leave=False):  # fmt: skip
        cm.update(item["label"], item["pred"])
    return cm.summary(protocol.names, protocol.majority, protocol.subsets)


def ordered_map(fn, items, threads: int, lookahead: int = 16):
    """``map(fn, items)`` on a thread pool, in order, at most ``lookahead`` items ahead. PNG decoding and
    OpenCV release the GIL, so threads decode in parallel without copying arrays between processes."""
    items = list(items)
    with cf.ThreadPoolExecutor(threads) as pool:
        pending = [pool.submit(fn, x) for x in items[:lookahead]]
        for i in range(len(items)):
            if i + lookahead < len(items):
                pending.append(pool.submit(fn, items[i + lookahead]))
            yield pending[i].result()
            pending[i] = None
