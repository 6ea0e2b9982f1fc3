"""Where the shipped recipes live, and loading one by name."""

from __future__ import annotations

from pathlib import Path

PACKAGE_CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "toycity"


def config_dir(path: str | Path | None) -> Path:
    """The recipe directory: ``path`` if it exists, else the repository's ``configs/toycity``."""
    for candidate in (Path(path) if path else None, PACKAGE_CONFIGS):
        if candidate is not None and candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"recipe directory not found: {path} (nor {PACKAGE_CONFIGS})")


def recipe_path(name: str, recipes: str | Path | None = None) -> Path:
    """The YAML file of recipe ``name``; a clear error listing the available recipes if absent."""
    d = config_dir(recipes)
    path = d / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in d.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {path}; recipes available: {known}")
    return path
