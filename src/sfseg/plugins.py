"""Code of the user's own that registers models, datasets, methods, loss parts or validators.

sfseg never imports code named by a recipe (a recipe is data). Extensions are loaded from the environment
the user controls: installed packages that declare an ``sfseg.plugins`` entry point, and the modules named
in the ``SFSEG_PLUGINS`` environment variable (comma-separated, importable from ``PYTHONPATH``). Each
module registers its entries on import (``@MODELS.register(...)``, ``@METHODS.register(...)``, ... of
:mod:`sfseg.registry`). The command
line loads them once, before it reads any recipe.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from sfseg.errors import ConfigError

_loaded = False


def load_plugins() -> list[str]:
    """Import every plugin module once; returns their names. An import that fails is one error naming it."""
    global _loaded
    if _loaded:
        return []
    _loaded = True
    names = [ep.value for ep in entry_points(group="sfseg.plugins")]
    names += [n.strip() for n in os.environ.get("SFSEG_PLUGINS", "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name.split(":")[0])
        except ImportError as e:
            raise ConfigError(
                f"plugin module {name!r} (SFSEG_PLUGINS or an sfseg.plugins entry point) cannot be "
                f"imported: {e}"
            ) from None
    return names
