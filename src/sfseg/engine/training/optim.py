"""Optimisers with parameter groups (backbone at lr, head at a multiple), and the learning-rate schedule.

* ``sgd`` (DeepLab-v2, the LD reference): two groups, backbone and head; weight decay on every parameter.
* ``adamw`` (DAFormer/SegFormer practice): four groups, backbone and head, each split into parameters
  with weight decay and without (normalisation weights, biases, and the names a model lists in
  ``no_weight_decay()``, e.g. position embeddings).

Schedule: an optional linear warm-up from ``warmup_ratio`` x lr over ``warmup_steps``, then poly decay
``lr * (1 - step / nominal_steps) ** poly_power`` (constant when ``nominal_steps`` is 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from sfseg.config import in_range, require
from sfseg.errors import MethodError


@dataclass
class OptimConfig:
    """Optimiser settings.

    Attributes:
        kind: ``sgd`` or ``adamw``.
        lr: backbone learning rate.
        head_lr_mult: the head's learning rate is ``lr * head_lr_mult`` (DeepLab-v2 and DAFormer: 10).
        momentum: SGD momentum.
        betas: AdamW's betas.
        weight_decay: L2 weight decay (SGD) or decoupled weight decay (AdamW).
        poly_power: poly decay ``lr * (1 - step / nominal_steps) ** power``.
        nominal_steps: the step count the poly schedule is spread over; 0 = constant learning rate.
        warmup_steps: linear warm-up steps before the poly decay (DAFormer: 1500); 0 = none.
        warmup_ratio: the warm-up starts at this fraction of the learning rate (DAFormer: 1e-6).
    """

    kind: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    nominal_steps: int = 0
    warmup_steps: int = 0
    warmup_ratio: float = 1e-6

    def check(self) -> None:
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(self.head_lr_mult > 0, "head_lr_mult", f"must be positive, got {self.head_lr_mult}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            f"must be two numbers in [0, 1), got {self.betas}",
        )
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.poly_power >= 0, "poly_power", f"must be >= 0, got {self.poly_power}")
        in_range(self.nominal_steps, 0, 10**9, "nominal_steps")
        in_range(self.warmup_steps, 0, 10**9, "warmup_steps")
        require(0 < self.warmup_ratio <= 1, "warmup_ratio", f"must be in (0, 1], got {self.warmup_ratio}")


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper; itself otherwise.

    Look up model methods (``head_parameters``) and save weights on the unwrapped model: a wrapper hides
    the methods and prefixes every key with ``module.``.
    """
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel) else model


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) trainable parameters; the head is the model contract's ``head_parameters()``.

    A DDP-wrapped model is unwrapped first, so the head keeps its learning rate multiplier.
    """
    model = unwrap(model)
    head_ids = {id(p) for p in model.head_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [p for p in trainable if id(p) not in head_ids], [p for p in trainable if id(p) in head_ids]


def no_decay_ids(model: nn.Module) -> set[int]:
    """Parameters AdamW leaves without weight decay: normalisation weights, biases (every parameter with
    at most one dimension) and those the model names in ``no_weight_decay()``."""
    model = unwrap(model)
    named = set(getattr(model, "no_weight_decay", lambda: set())())
    return {id(p) for n, p in model.named_parameters() if p.ndim <= 1 or n in named}


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over ``model``'s trainable parameters, each group carrying ``base_lr``."""
    backbone, head = param_groups(model)
    lr = cfg.lr * lr_scale
    parts = [(backbone, lr), (head, lr * cfg.head_lr_mult)]
    if cfg.kind == "sgd":
        groups = [{"params": ps, "lr": glr, "base_lr": glr} for ps, glr in parts if ps]
    else:
        skip = no_decay_ids(model)
        groups = []
        for ps, glr in parts:
            for decay in (True, False):
                chosen = [p for p in ps if (id(p) not in skip) == decay]
                if chosen:
                    wd = cfg.weight_decay if decay else 0.0
                    groups.append({"params": chosen, "lr": glr, "base_lr": glr, "weight_decay": wd})
    if not groups:
        raise MethodError("the model has no trainable parameters (check method.trainable)")
    if cfg.kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_factor(cfg: OptimConfig, step: int) -> float:
    """The learning-rate multiplier at ``step`` (counted over the whole run): warm-up, then poly."""
    factor = 1.0
    if cfg.nominal_steps > 0:
        factor = max(0.0, 1 - step / cfg.nominal_steps) ** cfg.poly_power
    if step < cfg.warmup_steps:
        factor *= cfg.warmup_ratio + (1 - cfg.warmup_ratio) * step / cfg.warmup_steps
    return factor


def poly_step(optimizer: torch.optim.Optimizer, cfg: OptimConfig, step: int) -> None:
    """Set every group's learning rate for ``step``."""
    factor = lr_factor(cfg, step)
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
