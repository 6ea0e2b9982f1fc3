"""Normalisation layers during adaptation: BatchNorm's ``train``/``frozen`` modes and AdaBN, which need
running statistics (BatchNorm only), and which affine parameters train (BatchNorm, LayerNorm, GroupNorm).

* ``bn_mode`` acts on BatchNorm layers; LayerNorm and GroupNorm normalise each sample by itself, so a
  network without BatchNorm (a ViT) behaves the same in both modes.
* AdaBN re-estimates BatchNorm running statistics; it is refused, naming the architecture, for a network
  without BatchNorm.
* TENT's ``norm_affine`` trains the scale and shift of every normalisation layer.

AdaBN: Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation", ICLR-W 2017.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from sfseg.errors import MethodError
from sfseg.models.base import NORM_TYPES


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers (those with running statistics): the model contract's ``batch_norm_layers()``
    (any module, e.g. a DDP wrapper or a teacher, is searched)."""
    if hasattr(model, "batch_norm_layers"):
        return model.batch_norm_layers()
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """Every normalisation layer (BatchNorm, LayerNorm, GroupNorm): the contract's ``norm_layers()``."""
    if hasattr(model, "norm_layers"):
        return model.norm_layers()
    return [m for m in model.modules() if isinstance(m, NORM_TYPES)]


def require_batch_norm(model: nn.Module, what: str) -> None:
    """Refuse ``what`` (e.g. ``method.adabn``) on a network without BatchNorm layers, naming it."""
    if not bn_layers(model):
        arch = getattr(model, "arch", type(model).__name__)
        raise MethodError(
            f"{what} re-estimates BatchNorm statistics, but {arch} has no BatchNorm layers (its "
            "normalisation layers normalise each sample by themselves); leave it out for this network"
        )


def freeze_bn_affine(model: nn.Module) -> None:
    """Stop gradients to BN scale and shift (the reference keeps them fixed during adaptation)."""
    for m in bn_layers(model):
        for p in m.parameters():
            p.requires_grad_(False)


def train_downsample_bn_affine(model: nn.Module) -> None:
    """Let the BN scale and shift of residual ``downsample`` branches train (the released LDBE code froze
    only the main path's BN affine parameters)."""
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and ".downsample." in f".{name}.":
            for p in m.parameters():
                p.requires_grad_(True)


def train_only_norm_affine(model: nn.Module) -> None:
    """Freeze every parameter except the normalisation layers' scale and shift (TENT, Wang et al., ICLR
    2021: BatchNorm for CNNs; LayerNorm/GroupNorm for transformers).

    Raises:
        MethodError: the network has no normalisation layer with an affine part.
    """
    layers = [m for m in norm_layers(model) if list(m.parameters())]
    if not layers:
        arch = getattr(model, "arch", type(model).__name__)
        raise MethodError(
            f"method.trainable: norm_affine, but {arch} has no normalisation layer with a scale"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for m in layers:
        for p in m.parameters():
            p.requires_grad_(True)


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """``train``: batch statistics (running statistics keep updating); ``frozen``: running statistics."""
    if mode not in ("train", "frozen"):
        raise ValueError(f"bn_mode must be 'train' or 'frozen', got {mode!r}")
    for m in bn_layers(model):
        m.train(mode == "train")


@contextlib.contextmanager
def frozen_bn_buffers(model: nn.Module) -> Iterator[None]:
    """Run a pass (e.g. a share probe with BN in train mode) without changing any BN buffer: running
    statistics and counters are restored on exit."""
    saved = [(b, b.detach().clone()) for m in bn_layers(model) for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


@torch.no_grad()
def adabn(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    progress: bool = False,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Replace every BN layer's running statistics by the exact average over ``batches`` (normalised images).

    Uses cumulative averaging (``momentum=None``): each layer's statistics are the mean of its per-batch
    means and (unbiased) variances, so the result does not depend on the batch order. Across processes,
    ``all_reduce_sum`` combines the per-process averages weighted by their batch counts, which equals one
    process seeing all the batches.
    """
    require_batch_norm(model, "AdaBN (method.adabn)")
    layers = bn_layers(model)
    saved = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in tqdm(batches, desc="AdaBN", disable=not progress, leave=False):
        model(x)
    if all_reduce_sum is not None:
        for m in layers:
            n = m.num_batches_tracked.to(m.running_mean.dtype)
            packed = torch.cat([m.running_mean * n, m.running_var * n, n.view(1)])
            packed = all_reduce_sum(packed)
            total = packed[-1].clamp(min=1)
            c = m.running_mean.numel()
            m.running_mean.copy_(packed[:c] / total)
            m.running_var.copy_(packed[c : 2 * c] / total)
            m.num_batches_tracked.fill_(int(packed[-1].item()))
    for m, mom in zip(layers, saved):
        m.momentum = mom
    model.train(was_training)
