"""What source training and adaptation share: the distributed wrapping of the network and one optimisation
step (learning rate, normalisation, memory layout, autocast, the divergence check, backward, update)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sfseg.data.normalization import Normalization
from sfseg.engine.runtime.config import RuntimeConfig
from sfseg.engine.runtime.distributed import Dist
from sfseg.engine.runtime.guard import DivergenceGuard
from sfseg.engine.training.optim import OptimConfig, poly_step
from sfseg.errors import ConfigError


def wrap_for_training(
    model: nn.Module, runtime: RuntimeConfig, dist: Dist, device: torch.device
) -> nn.Module:
    """The network as the training step calls it: under ``torchrun``, DistributedDataParallel (with
    SyncBatchNorm when ``runtime.sync_bn``); in one process, the network itself."""
    if not dist.enabled:
        return model
    if runtime.sync_bn:
        if device.type != "cuda":
            raise ConfigError("runtime.sync_bn needs CUDA devices (SyncBatchNorm has no CPU path)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def random_flip(
    images: torch.Tensor, target: torch.Tensor | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flip each image (and its per-pixel target) horizontally with probability 1/2, drawn from
    ``generator`` (so the draw depends on the step, not on the device).

    Shape:
        images (B, 3, H, W), target (B, H, W) or None.
    """
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    if target is not None:
        target = torch.where(flip.view(-1, 1, 1), target.flip(-1), target)
    return images, target


class TrainStep:
    """One optimisation step, the same for source training and adaptation.

    Args:
        optimizer: rebuilt by the caller when it wants (adaptation: every round).
        optim: the schedule (warm-up, poly decay) applied at every step.
        norm: the checkpoint's input normalisation.
        channels_last: feed the network channels-last tensors.
        amp: bfloat16 autocast for the forward pass and the loss.
        guard: checks the loss parts (when the loss function reports them) before the update.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        optim: OptimConfig,
        norm: Normalization,
        channels_last: bool,
        amp: bool,
        guard: DivergenceGuard,
    ):
        self.optimizer, self.optim, self.norm = optimizer, optim, norm
        self.channels_last, self.amp, self.guard = channels_last, amp, guard

    def __call__(
        self,
        step: int,
        images: torch.Tensor,
        loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float] | None]],
        last_good: str,
    ) -> tuple[torch.Tensor, dict[str, float] | None]:
        """Update the network on uint8 ``images`` (B, 3, H, W) with ``loss_fn(normalised images)``.

        ``loss_fn`` returns the loss and, optionally, each part's value on the host (then checked for
        divergence with the total; None skips the check, e.g. to avoid a host sync at every step).
        """
        poly_step(self.optimizer, self.optim, step)
        x = self.norm(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, values = loss_fn(x)
        if values is not None:
            self.guard.losses(values, step, last_good, float(loss.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, values
