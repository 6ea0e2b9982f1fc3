"""Evaluation of a model on a labelled split: logits at label resolution, argmax, confusion matrix."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from sfseg.data.classes import ClassProtocol
from sfseg.engine import distributed
from sfseg.engine.inference import Inference, batch_size_hw
from sfseg.engine.loading import sharded_loader
from sfseg.engine.metrics import ConfusionMatrix
from sfseg.errors import DatasetError


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
        cm.update(batch["label"], logits.max(1).indices)
    cm.reduce_from_all_processes(distributed.all_reduce_sum)
    model.train(was_training)
    return cm.summary(protocol.names, protocol.majority, protocol.subsets)
