"""An exponential-moving-average (mean) teacher, as used by LDBE's boundary-enhancement stage.

Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017. Decay schedule of the BE
stage: ``d_t = min(1 - 1 / (t + 1), max_decay)`` (0 at the first step: the teacher starts as the student).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sfseg.models.ops import upsample_logits


class EMATeacher(nn.Module):
    """Keeps ``teacher = d * teacher + (1 - d) * student`` for parameters; buffers (BN statistics) are copied.

    A module, so its weights are part of a run's state (``state_dict``) and resume restores them.

    Args:
        student: the network being trained (unwrapped); the teacher starts as a copy of it.
        max_decay: the decay cap (BE: 0.99).
        align_corners: how :meth:`predict` upsamples logits to the input size.
    """

    def __init__(self, student: nn.Module, max_decay: float = 0.99, align_corners: bool = False):
        super().__init__()
        self.model = copy.deepcopy(student)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_decay = max_decay
        self.align_corners = align_corners

    def decay(self, step: int) -> float:
        return min(1 - 1 / (step + 1), self.max_decay)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        """Blend in the student after optimizer step ``step`` (counted from 0)."""
        d = self.decay(step)
        for t, s in zip(self.model.parameters(), student.parameters()):
            t.mul_(d).add_(s.detach(), alpha=1 - d)
        for t, s in zip(self.model.buffers(), student.buffers()):
            t.copy_(s)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher confidence and label per pixel. Shape: (B, 3, H, W) -> (B, H, W), (B, H, W)."""
        logits = upsample_logits(self.model(images), images.shape[-2:], self.align_corners)
        return logits.float().softmax(1).max(1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predict(images)
