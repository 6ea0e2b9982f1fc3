"""Where the shipped recipes live, and loading one by name."""

from __future__ import annotations

from pathlib import Path

from sfseg.errors import ConfigError

CONFIGS_ROOT = Path(__file__).resolve().parents[3] / "configs"
PACKAGE_CONFIGS = CONFIGS_ROOT / "toycity"


def config_dir(path: str | Path | None) -> Path:
    """The recipe directory: ``path`` if it exists, else the repository's ``configs/toycity``."""
    for candidate in (Path(path) if path else None, PACKAGE_CONFIGS):
        if candidate is not None and candidate.is_dir():
            return candidate
    raise ConfigError(f"recipe directory not found: {path} (nor {PACKAGE_CONFIGS})")


def recipe_path(name: str, recipes: str | Path | None = None) -> Path:
    """The YAML file of recipe ``name``; a clear error listing the available recipes if absent.

    ``name`` is a recipe of ``recipes`` (default ``configs/toycity``), or ``<benchmark>/<recipe>`` for
    another directory of ``configs/`` (e.g. ``gta5_to_cityscapes/ld``).
    """
    if "/" in name:
        d, name = CONFIGS_ROOT / name.rsplit("/", 1)[0], name.rsplit("/", 1)[1]
    else:
        d = config_dir(recipes)
    path = d / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in d.glob("*.yaml"))
        raise ConfigError(f"no recipe {path}; recipes available: {known}")
    return path
