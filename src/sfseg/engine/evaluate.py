"""Evaluation of a model on a labelled split: logits at label resolution, argmax, confusion matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from sfseg.data.classes import ClassProtocol
from sfseg.data.datasets import ListDataset
from sfseg.data.normalization import Normalization
from sfseg.engine.metrics import ConfusionMatrix


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ListDataset,
    normalization: Normalization,
    protocol: ClassProtocol,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "eval",
) -> dict:
    """Single-scale evaluation in eval mode (BN running statistics).

    Logits are upsampled bilinearly to the label's resolution before the argmax; labels are never resized.

    Returns:
        the :meth:`ConfusionMatrix.summary` dict (mIoU, per-class IoU, majority/minority mIoU, in %).
    """
    if not dataset.has_labels:
        raise ValueError("evaluation needs a labelled split")
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(protocol.num_classes)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        logits = model(normalization(batch["image"]))
        label = batch["label"]
        if logits.shape[-2:] != label.shape[-2:]:
            logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        cm.update(label, logits.argmax(1))
    model.train(was_training)
    return cm.summary(protocol.names, protocol.majority, protocol.subsets)
