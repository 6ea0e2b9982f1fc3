"""Confusion-matrix segmentation metrics.

Zero-union policy: a class that appears in neither the ground truth nor the predictions of the evaluated
set has no IoU (NaN) and is **skipped** by the mean (``nanmean``), as in the field's common evaluation
code. It is reported as ``null``/``-`` per class. A class present in the ground truth but never predicted
gets IoU 0 and counts.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from sfseg.constants import IGNORE_INDEX
from sfseg.models.ops import count_into


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) confusion matrix; rows = ground truth, columns = prediction.

    The matrix lives on the device of the first update (the network's), so a GPU evaluation never moves
    per-pixel data to the host; :meth:`reduce_from_all_processes` sums it across ``torchrun`` ranks.

    Args:
        num_classes: number of classes.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        # (n + 1) x n counters: row n collects the ignored (255) pixels and is dropped.
        self._counts = torch.zeros((num_classes + 1) * num_classes, dtype=torch.int64, device=device)

    @property
    def mat(self) -> torch.Tensor:
        """The matrix, on the host."""
        n = self.num_classes
        return self._counts[: n * n].view(n, n).cpu()

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Add a batch.

        Shape:
            target, pred: same shape, integer class indices (uint8 or wider); target may hold 255 (ignored).

        Raises:
            ValueError: if ``target`` holds a value that is neither a class index nor 255, or the shapes
                differ.
        """
        n = self.num_classes
        if tuple(target.shape) != tuple(pred.shape):
            raise ValueError(
                f"ground truth {tuple(target.shape)} and prediction {tuple(pred.shape)} differ in shape"
            )
        device = pred.device
        if self._counts.device != device:
            self._counts = self._counts.to(device)
        target, pred = target.reshape(-1), pred.reshape(-1)
        fast = device.type == "cpu" and target.dtype == pred.dtype == torch.uint8 and n < 254
        if fast and target.numel() < 2**24:
            # One OpenCV 2-D histogram of (target, prediction) does the counting and the checks: 255 goes to
            # row n, any other invalid target value to row n + 1, invalid predictions to columns >= n.
            # Exact (float32 counts of < 2^24 pixels) and several times a bincount of an int index.
            t = cv2.LUT(target.numpy(), self._lut())
            hist = cv2.calcHist([t, pred.numpy()], [0, 1], None, [n + 2, 256], [0, n + 2, 0, 256])
            if hist[n + 1].any() or hist[:, n:].any():
                self._check(target, pred)
            self._counts += torch.from_numpy(hist[: n + 1, :n].astype(np.int64)).reshape(-1)
            return
        if target.device.type == "cpu":
            self._check_target(target)  # checked on the host, before the copy: no device sync
        if device.type == "cpu":
            self._check(target, pred)
        target = target.to(device, non_blocking=True)
        # 255 becomes row n, which is dropped: no masked copy of the pixels.
        t = torch.where(target == IGNORE_INDEX, n, target.to(torch.int64))
        count_into(self._counts, t * n + pred.to(torch.int64))

    def _check_target(self, target: torch.Tensor) -> None:
        n = self.num_classes
        bad = (target >= n) & (target != IGNORE_INDEX)
        if target.dtype != torch.uint8:
            bad |= target < 0
        if bool(bad.any()):
            values = sorted(set(target[bad].unique().tolist()))
            raise ValueError(f"ground truth holds values {values}: neither class indices 0..{n - 1} nor 255")

    def _check(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        n = self.num_classes
        self._check_target(target)
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= n):
            raise ValueError(f"predictions must be class indices 0..{n - 1}")

    def _lut(self) -> np.ndarray:
        lut = np.full(256, self.num_classes + 1, dtype=np.uint8)
        lut[: self.num_classes] = np.arange(self.num_classes)
        lut[IGNORE_INDEX] = self.num_classes
        return lut

    def reduce_from_all_processes(self, all_reduce_sum) -> None:
        """Sum the matrix over ``torchrun`` ranks with ``all_reduce_sum`` (the identity in one process)."""
        self._counts = all_reduce_sum(self._counts)

    def iou(self) -> np.ndarray:
        """Per-class IoU in [0, 1]; NaN for a class with zero union."""
        m = self.mat.double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
        return iou.numpy()

    def pixel_accuracy(self) -> float:
        total = self.mat.sum().item()
        return float(self.mat.diag().sum().item() / total) if total else float("nan")

    def summary(
        self,
        class_names: list[str] | tuple[str, ...],
        majority: list[int] | None = None,
        subsets: tuple[tuple[str, tuple[str, ...]], ...] = (),
    ) -> dict:
        """mIoU, per-class IoU and (when ``majority`` is given) majority/minority mIoU, all in percent.

        ``subsets`` adds one score per ``(name, class names)``: the mean IoU over those classes of this same
        matrix (SYNTHIA's 13-class mIoU is the 16-class matrix's IoU averaged over 13 classes).
        """
        iou = self.iou() * 100
        out = {
            "miou": _nanmean(iou),
            "per_class": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)},
            "pixel_acc": self.pixel_accuracy() * 100,
        }
        if majority is not None:
            minority = [i for i in range(self.num_classes) if i not in majority]
            out["majority_miou"] = _nanmean(iou[majority])
            out["minority_miou"] = _nanmean(iou[minority])
        index = {n: i for i, n in enumerate(class_names)}
        for name, members in subsets:
            out[name] = _nanmean(iou[[index[m] for m in members]])
        return out


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")
