"""BatchNorm handling during adaptation: the ``train``/``frozen`` modes and AdaBN.

AdaBN: Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation", ICLR-W 2017.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def freeze_bn_affine(model: nn.Module) -> None:
    """Stop gradients to BN scale and shift (the reference keeps them fixed during adaptation)."""
    for m in bn_layers(model):
        for p in m.parameters():
            p.requires_grad_(False)


def train_only_bn_affine(model: nn.Module) -> None:
    """Freeze every parameter except BN scale and shift (TENT, Wang et al., ICLR 2021)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for m in bn_layers(model):
        for p in m.parameters():
            p.requires_grad_(True)


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """``train``: batch statistics (running statistics keep updating); ``frozen``: running statistics."""
    if mode not in ("train", "frozen"):
        raise ValueError(f"bn_mode must be 'train' or 'frozen', got {mode!r}")
    for m in bn_layers(model):
        m.train(mode == "train")


@torch.no_grad()
def adabn(model: nn.Module, batches: Iterable[torch.Tensor], progress: bool = False) -> None:
    """Replace every BN layer's running statistics by the exact average over ``batches`` (normalised images).

    Uses cumulative averaging (``momentum=None``) so the result does not depend on the batch order.
    """
    layers = bn_layers(model)
    saved = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in tqdm(batches, desc="AdaBN", disable=not progress, leave=False):
        model(x)
    for m, mom in zip(layers, saved):
        m.momentum = mom
    model.train(was_training)
