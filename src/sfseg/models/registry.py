"""Model registry and factory (after timm's ``create_model``): one entry function per architecture."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sfseg.config import brief
from sfseg.errors import ConfigError

MAX_PARAMETERS = 5_000_000_000

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn(num_classes, **kwargs) -> nn.Module`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered architecture.

    Args:
        name: registered name (see :func:`list_models`).
        num_classes: number of output channels.
        **kwargs: architecture options, passed to the entry function.
    """
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {list_models()}")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"model {name!r}: its options must be a mapping, got {brief(kwargs)}")
    try:
        # Sized on the meta device first (no memory): an option such as width: 1e9 is refused, not allocated.
        with torch.device("meta"):
            params = sum(p.numel() for p in _MODELS[name](num_classes=num_classes, **kwargs).parameters())
        if params > MAX_PARAMETERS:
            raise ValueError(f"{params:,} parameters is more than sfseg builds ({MAX_PARAMETERS:,})")
        return _MODELS[name](num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model {name!r} with options {brief(kwargs)}: {str(e)[:300]}") from None
