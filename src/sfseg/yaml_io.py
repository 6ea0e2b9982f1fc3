"""Reading recipes and other small YAML files strictly: the safe loader (no Python object is ever built),
a key given twice in one mapping refused (YAML would let the second replace the first silently), numbers
that keep the text they were written with (for keys that take strings: ``out: 010`` is "010"), a size
check on the expanded document (an alias bomb is refused in milliseconds), ``_base_`` chains, and bounded
``repr`` for messages."""

from __future__ import annotations

import importlib.resources
import reprlib
from pathlib import Path
from typing import Any

import yaml

from sfseg.errors import ConfigError
from sfseg.fileio import read_text

_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxtuple, _BRIEF.maxdict = 2, 6, 6, 6
_BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 80, 80, 40

MAX_NODES = 100_000
"""The most values a config (file or override) may hold once YAML aliases are expanded."""

MAX_DEPTH = 32

MAX_CONFIG_BYTES = 2**20

SHIPPED_CONFIGS = Path(str(importlib.resources.files("sfseg"))) / "configs"
"""The recipes shipped inside the package (in a checkout, a link to the repository's ``configs/``)."""


def shipped_recipes(under: str = "") -> list[str]:
    """The shipped recipes' names (``toycity/ld``, ...), ``_base_`` fragments left out."""
    root = SHIPPED_CONFIGS / under
    names = (p.relative_to(SHIPPED_CONFIGS).with_suffix("") for p in root.rglob("*.yaml"))
    return sorted(str(n) for n in names if "_base_" not in n.parts)


def find_config(path: str | Path) -> Path:
    """A recipe file: ``path`` when it exists, else the shipped recipe of that name, so that
    ``toycity/ld``, ``toycity/ld.yaml`` and ``configs/toycity/ld.yaml`` work from any directory."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    rel = Path(*given.parts[1:]) if given.parts[:1] == ("configs",) and len(given.parts) > 1 else given
    for candidate in (rel, rel.with_name(rel.name + ".yaml")):
        if (SHIPPED_CONFIGS / candidate).is_file():
            return SHIPPED_CONFIGS / candidate
    near = [n for n in shipped_recipes() if n.endswith("/" + rel.with_suffix("").name)][:8]
    hint = f"shipped recipes of that name: {near}" if near else "`sfseg recipes` lists the shipped recipes"
    raise ConfigError(f"config file not found: {path} (nor a shipped recipe of that name; {hint})")


"""The largest recipe or mapping file sfseg reads (1 MiB; a recipe is a few hundred bytes)."""


def brief(value: Any) -> str:
    """A bounded ``repr`` for messages: long strings, deep or long containers (an expanded YAML alias
    bomb, say) are shortened with ``...``."""
    return _BRIEF.repr(value)


def check_size(data: Any, where: str) -> None:
    """Refuse a parsed YAML document that expands (through aliases) to more than :data:`MAX_NODES` values
    or nests deeper than :data:`MAX_DEPTH`; walks at most that many values, so it is fast whatever the
    document claims to hold."""
    stack, seen = [(data, 0)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES or depth > MAX_DEPTH:
            what = (
                f"more than {MAX_NODES:,} values" if seen > MAX_NODES else f"deeper than {MAX_DEPTH} levels"
            )
            raise ConfigError(
                f"{where}: the document expands to {what} (YAML aliases that repeat each other?); a recipe "
                "is a small mapping of keys to values"
            )
        if isinstance(node, dict):
            stack += [(k, depth + 1) for k in node] + [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list | tuple):
            stack += [(v, depth + 1) for v in node]


class _Int(int):
    """A YAML integer that remembers how it was written (``010``), for keys that take strings."""

    text: str


class _Float(float):
    """A YAML float that remembers how it was written (``1.10``), for keys that take strings."""

    text: str


class _DuplicateKey(yaml.YAMLError):
    """A key given twice in one YAML mapping."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping and keeps the text of numbers."""


def _no_duplicate_keys(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # ``<<: *base`` merges are overridden by the mapping's own keys, by design
        key = loader.construct_object(key_node, deep=True)
        try:
            repeated = key in seen
        except TypeError:
            continue  # an unhashable key: the safe constructor reports it
        if repeated:
            raise _DuplicateKey(
                f"key {brief(key)} is given twice in one mapping (lines {seen[key] + 1} and "
                f"{key_node.start_mark.line + 1}); keep one (YAML would silently use the last)"
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


def _number(kind: type, base: str):
    def construct(loader: _StrictLoader, node: yaml.ScalarNode):
        value = kind(getattr(yaml.SafeLoader, base)(loader, node))
        value.text = node.value
        return value

    return construct


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _number(_Int, "construct_yaml_int"))
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _number(_Float, "construct_yaml_float"))


def plain(value: Any) -> Any:
    """``value`` with the loader's number types turned back into ``int`` and ``float`` (recursively)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def safe_yaml(text: str, where: str) -> Any:
    """YAML without Python objects (the safe loader), strict about repeated keys, with the size check of
    :func:`check_size`; errors name ``where``."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)
    except _DuplicateKey as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {brief(' '.join(str(e).split()))}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nests too deeply to be read") from None
    check_size(data, where)
    return data


def deep_merge(base: dict, delta: dict) -> dict:
    out = dict(base)
    for k, v in delta.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a config file, resolving ``_base_`` chains; errors name the file."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{path}: is not a file (a config file is expected)")
    text = read_text(path, MAX_CONFIG_BYTES, "recipe", ConfigError)
    data = safe_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
    base = data.pop("_base_", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    if not bases or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(
            f"{path}: _base_ must be a file name or a list of file names (relative to the file), got "
            f"{brief(base)}"
        )
    merged: dict = {}
    for b in bases:  # later bases override earlier ones; the file's own keys override them all
        merged = deep_merge(merged, read_yaml(path.parent / b, (*_seen, path.resolve())))
    return deep_merge(merged, data)
