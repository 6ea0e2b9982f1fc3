"""Seeing a run: TensorBoard scalars and images, and per-round prediction grids as PNG.

``metrics.jsonl`` stays the source of truth; TensorBoard (``<out>/tensorboard``, through PyTorch's
``SummaryWriter``) is a view of the same numbers: losses per step, per-class IoU and class shares per
round, thresholds, the selected fraction, pseudo-label accuracy where the split has labels, validator
scores, and the grids. A resumed run purges the events written after its last saved state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from sfseg.data.classes import ClassProtocol
from sfseg.engine.evaluation.inference import Inference
from sfseg.engine.runtime.loading import read_label_png
from sfseg.models.ops import argmax_classes


class Board:
    """A TensorBoard writer that does nothing when disabled (other ranks, ``runtime.tensorboard: false``)."""

    def __init__(self, log_dir: Path, enabled: bool = True, purge_step: int | None = None):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalar(self, tag: str, value, step: int) -> None:
        if self.writer is not None and value is not None:
            self.writer.add_scalar(tag, float(value), step)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        for k, v in values.items():
            if isinstance(v, int | float) and v is not None:
                self.scalar(f"{prefix}/{k}", v, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def log_eval(board: Board, res: dict | None, step: int) -> None:
    """Target-val scores of one evaluation (mIoU, majority/minority, per class)."""
    if not res:
        return
    board.scalars(
        "val", {k: res.get(k) for k in ("miou", "majority_miou", "minority_miou", "pixel_acc")}, step
    )
    board.scalars("val_iou", {k: v for k, v in res["per_class"].items() if v is not None}, step)


def log_pseudo_labels(board: Board, stats: dict, step: int) -> None:
    """A round's pseudo-label statistics: shares, thresholds, selected fraction, accuracy."""
    board.scalars("pred_share", stats.get("pred_share", {}), step)
    board.scalars("pl_share", stats.get("pl_share", {}), step)
    board.scalars("threshold", {k: v for k, v in stats.get("thresholds", {}).items() if v is not None}, step)
    board.scalars("pl", {k: stats.get(k) for k in ("selected_fraction", "pl_accuracy", "alpha")}, step)
    board.scalars(
        "pl", {k: stats.get(k) for k in ("pl_recall", "nl_error") if stats.get(k) is not None}, step
    )
    for key, tag in (
        ("pl_accuracy_per_class", "pl_accuracy"),
        ("pl_recall_per_class", "pl_recall"),
        ("true_share", "true_share"),
        ("nl_error_per_class", "nl_error"),
    ):
        values = stats.get(key) or {}
        board.scalars(tag, {k: v for k, v in values.items() if v is not None}, step)


def grid_indices(n: int, count: int = 4) -> list[int]:
    """Fixed, evenly spaced images of a split for the grids."""
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(count, n))})


def colorize(label: np.ndarray, protocol: ClassProtocol) -> np.ndarray:
    """(H, W) class indices (255 = none) -> (H, W, 3) uint8 in the protocol's colours (black for 255)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: protocol.num_classes] = np.asarray(protocol.colors, np.uint8)
    return lut[label]


@torch.no_grad()
def prediction_grid(
    inference: Inference,
    dataset: Dataset,
    indices: list[int],
    protocol: ClassProtocol,
    pseudo_paths: list[Path] | None = None,
    max_width: int = 384,
    root: Path | None = None,
) -> np.ndarray:
    """One row per image: the image, its pseudo-label (when given), the model's prediction (eval mode),
    and its ground truth (when the split has labels). Returns (H, W, 3) uint8.

    Target labels shown here are for looking only; they never reach a loss.
    """
    model: nn.Module = inference.model
    was = model.training
    model.eval()
    rows = []
    view = inference.view(dataset)  # the one input path (PIL resizing happens in the view)
    try:
        for i in indices:
            item = view[i]
            h, w = item["size"].tolist()
            logits = inference.logits(item["image"][None], (h, w))
            inference.check_finite("the prediction grid")
            pred = argmax_classes(logits)[0].cpu().numpy().astype(np.uint8)
            cells = [dataset.image(i).permute(1, 2, 0).numpy()]
            if pseudo_paths:
                cells.append(colorize(read_label_png(pseudo_paths[i], root), protocol))
            cells.append(colorize(pred, protocol))
            if getattr(dataset, "has_labels", False):
                cells.append(colorize(dataset.label(i).numpy().astype(np.uint8), protocol))
            rows.append(np.concatenate(_fit_cells(cells, max_width), axis=1))
    finally:
        model.train(was)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def _fit_cells(cells: list[np.ndarray], max_width: int, min_width: int = 192) -> list[np.ndarray]:
    """Cells no wider than ``max_width`` (shrunk) and, for tiny images, at least ``min_width`` (pixels
    repeated, so each stays visible)."""
    h, w = cells[0].shape[:2]
    if w > max_width:
        size = (max_width, max(1, round(h * max_width / w)))
    elif w < min_width:
        k = -(-min_width // w)
        size = (w * k, h * k)
    else:
        return cells
    return [np.asarray(Image.fromarray(c).resize(size, Image.NEAREST)) for c in cells]
