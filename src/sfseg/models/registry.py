"""The model factory (after timm's ``create_model``): one entry function per architecture, registered in
:data:`sfseg.registry.MODELS` with its checkpoint hooks beside it::

    @MODELS.register(hooks=ModelHooks(classes_key="head.weight"))
    def my_net(num_classes: int, width: int = 64) -> SegmentationModel: ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sfseg.errors import ConfigError
from sfseg.models.base import SegmentationModel
from sfseg.registry import MODELS
from sfseg.yaml_io import brief

MAX_PARAMETERS = 5_000_000_000


@dataclass(frozen=True)
class ModelHooks:
    """What checkpoint code needs to know about an architecture.

    Attributes:
        classes_key: state-dict key of a tensor whose first dimension is the number of classes (the head's
            output): lets a checkpoint's metadata be checked against its weights.
        signature_keys: keys that together identify a bare state dict of this architecture (saved without
            sfseg's metadata), so that it gets a helpful error instead of a foreign-format guess.
    """

    classes_key: str = ""
    signature_keys: tuple[str, ...] = ()


def list_models() -> list[str]:
    return MODELS.names()


def model_hooks(name: str) -> ModelHooks:
    return MODELS.meta(name)["hooks"]


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered architecture.

    Args:
        name: registered name (see :func:`list_models`).
        num_classes: number of output channels.
        **kwargs: architecture options, passed to the entry function.
    """
    fn = MODELS.get(name)
    if not isinstance(kwargs, dict):
        raise ConfigError(f"model {name!r}: its options must be a mapping, got {brief(kwargs)}")
    try:
        # Sized on the meta device first (no memory): an option such as width: 1e9 is refused, not allocated.
        with torch.device("meta"):
            params = sum(p.numel() for p in fn(num_classes=num_classes, **kwargs).parameters())
        if params > MAX_PARAMETERS:
            raise ValueError(f"{params:,} parameters is more than sfseg builds ({MAX_PARAMETERS:,})")
        model = fn(num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model {name!r} with options {brief(kwargs)}: {str(e)[:300]}") from None
    if not isinstance(model, SegmentationModel):
        raise TypeError(
            f"model {name!r} builds a {type(model).__name__}, which does not implement the model contract: "
            "subclass sfseg.models.base.SegmentationModel"
        )
    model.arch, model.arch_kwargs = name, dict(kwargs)
    return model
