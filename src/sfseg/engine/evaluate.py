"""Evaluation of a model on a labelled split: logits at label resolution, argmax, confusion matrix."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sfseg.data.classes import ClassProtocol
from sfseg.data.normalization import Normalization
from sfseg.data.transforms import resize_image
from sfseg.engine.metrics import ConfusionMatrix
from sfseg.models.ops import upsample_logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    normalization: Normalization,
    protocol: ClassProtocol,
    batch_size: int = 16,
    input_size: list[int] | tuple[int, int] = (),
    workers: int = 0,
    progress: bool = False,
    desc: str = "eval",
) -> dict:
    """Single-scale evaluation in eval mode (BN running statistics), no flip.

    Images are resized to ``input_size`` = (W, H) when given (Cityscapes protocol: 1024 x 512); logits are
    upsampled bilinearly to the label's resolution before the argmax; labels are never resized.

    Returns:
        the :meth:`ConfusionMatrix.summary` dict (mIoU, per-class IoU, majority/minority mIoU, in %).
    """
    if not dataset.has_labels:
        raise ValueError("evaluation needs a labelled split")
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(protocol.num_classes)
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images = batch["image"].to(device, non_blocking=True)
        if input_size:
            images = resize_image(images, tuple(input_size))
        label = batch["label"]
        cm.update(label, upsample_logits(model(normalization(images)), label.shape[-2:]).argmax(1))
    model.train(was_training)
    return cm.summary(protocol.names, protocol.majority, protocol.subsets)
