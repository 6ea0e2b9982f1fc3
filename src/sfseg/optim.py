"""SGD with DeepLab-v2 parameter groups (backbone at lr, head at a multiple) and poly decay."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sfseg.config import in_range, require
from sfseg.errors import MethodError


@dataclass
class OptimConfig:
    """SGD settings.

    Attributes:
        lr: backbone learning rate.
        head_lr_mult: the classifier's learning rate is ``lr * head_lr_mult`` (DeepLab-v2: 10).
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        poly_power: poly decay ``lr * (1 - step / nominal_steps) ** power``.
        nominal_steps: the step count the poly schedule is spread over; 0 = constant learning rate.
    """

    lr: float = 0.01
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    nominal_steps: int = 0

    def check(self) -> None:
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(self.head_lr_mult > 0, "head_lr_mult", f"must be positive, got {self.head_lr_mult}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.poly_power >= 0, "poly_power", f"must be >= 0, got {self.poly_power}")
        in_range(self.nominal_steps, 0, 10**9, "nominal_steps")


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper; itself otherwise.

    Look up model methods (``head_parameters``) and save weights on the unwrapped model: a wrapper hides
    the methods and prefixes every key with ``module.``.
    """
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel) else model


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) trainable parameters; the head is ``model.head_parameters()`` when defined.

    A DDP-wrapped model is unwrapped first, so the head keeps its learning rate multiplier.
    """
    model = unwrap(model)
    head_ids = {id(p) for p in getattr(model, "head_parameters", lambda: [])()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [p for p in trainable if id(p) not in head_ids], [p for p in trainable if id(p) in head_ids]


def build_sgd(model: nn.Module, cfg: OptimConfig, lr_scale: float = 1.0) -> torch.optim.SGD:
    backbone, head = param_groups(model)
    groups = [
        g
        for g in (
            {"params": backbone, "lr": cfg.lr * lr_scale, "base_lr": cfg.lr * lr_scale},
            {
                "params": head,
                "lr": cfg.lr * lr_scale * cfg.head_lr_mult,
                "base_lr": cfg.lr * lr_scale * cfg.head_lr_mult,
            },
        )
        if g["params"]
    ]
    if not groups:
        raise MethodError("the model has no trainable parameters (check method.trainable)")
    return torch.optim.SGD(groups, lr=cfg.lr * lr_scale, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def poly_step(optimizer: torch.optim.Optimizer, cfg: OptimConfig, step: int) -> None:
    """Set every group's learning rate for ``step`` (counted over the whole run)."""
    factor = 1.0
    if cfg.nominal_steps > 0:
        factor = max(0.0, 1 - step / cfg.nominal_steps) ** cfg.poly_power
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
