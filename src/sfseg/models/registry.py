"""Model registry and factory (after timm's ``create_model``): one entry function per architecture."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from sfseg.errors import ConfigError

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
    try:
        return _MODELS[name](num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model {name!r} with options {kwargs}: {e}") from None
