"""Typed configs: dataclasses loaded from YAML, validated before any work starts.

* An unknown key is an error naming the key, where it was found and the valid keys; a key that was renamed
  (a config class's ``RENAMED``) names its replacement, and a class's ``check_legacy(data, where)`` can
  explain a value written in an older format.
* A wrong type or a value outside a ``Literal`` is an error naming the key and the valid choices.
* A value out of range (``rounds=-1``, ``alpha=1.5``) is an error naming the key and where it came from:
  a config class may define ``check(self)`` that raises :class:`ValueCheck` for a dotted key.
* A YAML file may start from another with ``_base_: other.yaml`` (relative to the file) and state only
  its deltas, so a leaf recipe reads like a row of an ablation table.
* Command-line overrides are ``dotted.key=value`` with ``value`` parsed as YAML (``losses=[negative]``,
  ``schedule.rounds=3``), except for a string key, which takes the text as it is (``out=010`` is the
  directory ``010``, not the octal number 8). A key whose first part is not a top-level key may be
  shortened to a field name that is unique in the schema: ``rounds=3`` means ``schedule.rounds=3``,
  ``optim.lr=1e-4`` means ``schedule.optim.lr=1e-4``.
* YAML is read strictly: a key given twice in one mapping is an error (YAML would let the second replace
  the first silently), a string key written as a number keeps its text (``out: 010``), and a recipe file
  is at most :data:`MAX_CONFIG_BYTES`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from sfseg.errors import ConfigError, ValueCheck
from sfseg.yaml_io import brief, deep_merge, find_config, plain, read_yaml, safe_yaml

T = TypeVar("T")

__all__ = ["ConfigError", "ValueCheck", "load_config", "from_dict", "to_dict", "save_config", "field_paths"]


MAX_OVERRIDE_CHARS = 65536


def _check(tp: Any, value: Any, where: str) -> Any:
    if tp is dict or tp is list:
        tp = dict[str, Any] if tp is dict else list[Any]
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return plain(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {brief(value)}")
        return from_dict(tp, value, where)
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(args):
            return "on" if value else "off"  # YAML 1.1 reads on/off/yes/no as booleans
        if not isinstance(value, str | int | float) or value not in args:
            raise ConfigError(f"{where}: {brief(value)} is not a valid choice; choose one of {list(args)}")
        return plain(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{where}: invalid value {brief(value)}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {brief(value)}")
        item = args[0] if args else Any
        out = [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {brief(value)}")
        vt = args[1] if args else Any
        return {str(k): _check(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept any numeral.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {brief(value)}")
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {value} is not a finite number")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {brief(value)}")
        if abs(value) > 2**63 - 1:
            raise ConfigError(f"{where}: {brief(value)} is out of range")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {brief(value)}")
        return value
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {brief(value)}")
        # A number written where a string is expected keeps its text: ``out: 010`` is "010", not "8".
        return str(getattr(value, "text", value))
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, validating keys and types recursively.

    ``where`` is the dotted key path of ``data`` (empty at the top), used in error messages.
    """
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        at = f"under {where!r}" if where else "at the top level"
        raise ConfigError(f"key {brief(odd[0])} {at} is not a name (keys are words such as 'rounds')")
    legacy = getattr(cls, "check_legacy", None)
    if legacy is not None:
        legacy(data, where)
    unknown = sorted(set(data) - set(fields))
    renamed = getattr(cls, "RENAMED", {})
    for key in unknown:
        if key in renamed:
            raise ConfigError(f"{where + '.' if where else ''}{key} is no longer a key: {renamed[key]}")
    if unknown:
        at = f"under {where!r}" if where else "at the top level"
        hint = ""
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
        else:
            # A key of a nested group written at the wrong level (e.g. ``rounds`` under ``schedule``).
            nested = {p.rsplit(".", 1)[-1]: p for p in field_paths(cls) if "." in p}
            close = difflib.get_close_matches(unknown[0], list(nested), n=1)
            if close:
                full = f"{where}.{nested[close[0]]}" if where else nested[close[0]]
                hint = f" (did you mean {full!r}? keys are grouped)"
        raise ConfigError(f"unknown key(s) {unknown} {at}{hint}; valid keys are {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _check(hints[name], value, f"{where}.{name}" if where else name)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where or 'config'}: required key(s) {missing} are missing")
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """A plain, YAML-serialisable dict (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def field_paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted field path of the dataclass schema ``cls`` (nested dataclasses included)."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        out.append(path)
        if dataclasses.is_dataclass(hints[f.name]):
            out += field_paths(hints[f.name], path + ".")
    return out


def resolve_key(cls: type, key: str) -> str:
    """The full dotted path of an override key, expanding a unique field name (``rounds`` ->
    ``schedule.rounds``). A key whose first part is a top-level field is returned as it is."""
    first, _, rest = key.partition(".")
    top = {f.name for f in dataclasses.fields(cls)}
    if first in top:
        return key
    matches = [p for p in field_paths(cls) if p.rsplit(".", 1)[-1] == first]
    if len(matches) == 1:
        return matches[0] + (f".{rest}" if rest else "")
    if len(matches) > 1:
        raise ConfigError(f"key {first!r} is ambiguous; write one of {matches}")
    names = sorted({p.rsplit(".", 1)[-1] for p in field_paths(cls)} | top)
    close = difflib.get_close_matches(first, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown key {first!r}{hint}; valid keys are {sorted(field_paths(cls))}")


def _set(data: dict, path: str, value: Any) -> dict:
    data = dict(data)
    node = data
    parts = path.split(".")
    for p in parts[:-1]:
        child = node.get(p)
        node[p] = dict(child) if isinstance(child, dict) else {}
        node = node[p]
    node[parts[-1]] = value
    return data


def parse_override(cls: type, item: str) -> tuple[str, Any]:
    """``key=value`` -> (full dotted key, YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"command-line override {brief(item)} must look like key=value (e.g. rounds=3)")
    if len(item) > MAX_OVERRIDE_CHARS:
        raise ConfigError(
            f"command-line override {brief(item)} is longer than {MAX_OVERRIDE_CHARS} characters"
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"command-line override {brief(item)} has no key")
    try:
        full = resolve_key(cls, key)
    except ConfigError as e:
        raise ConfigError(f"command-line override {brief(item)}: {e}") from None
    if _takes_string(cls, full) and not raw.strip().startswith(("'", '"')):
        return full, raw  # the text as it is: ``out=010`` is the directory "010"
    return full, safe_yaml(raw, f"command-line override {brief(item)}") if raw else ""


def _takes_string(cls: type, dotted: str) -> bool:
    """Whether the schema's field at ``dotted`` is a plain string (not a mapping value, list or choice)."""
    tp: Any = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp):
            return False
        hints = get_type_hints(tp)
        if part not in hints:
            return False
        tp = hints[part]
    return tp is str


def _covers(prefix: str, key: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    defaults: dict | None = None,
) -> T:
    """Defaults <- YAML file (with ``_base_``) <- overrides, then validate into ``cls``.

    Every error names where the offending value came from: the file, or the command-line override.
    """
    data = dict(defaults or {})
    if path is not None:
        path = find_config(path)
    origin = str(path) if path is not None else "defaults"
    if path is not None:
        data = deep_merge(data, read_yaml(path))
        try:
            from_dict(cls, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    sources: list[tuple[str, str]] = []  # (full key, the override text)
    for item in overrides or []:
        key, value = parse_override(cls, item)
        data = _set(data, key, value)
        sources.append((key, item))
        try:
            from_dict(cls, data)
        except ConfigError as e:
            raise ConfigError(f"command-line override {brief(item)}: {e}") from None
    cfg = from_dict(cls, data)
    try:
        check_config(cfg)
    except ValueCheck as e:
        src = next((s for k, s in reversed(sources) if _covers(k, e.key) or _covers(e.key, k)), None)
        where = f"command-line override {brief(src)}" if src else origin
        raise ConfigError(f"{where}: {e.key}: {e.message}") from None
    return cfg


def check_config(cfg: Any, prefix: str = "") -> None:
    """Run ``check()`` of ``cfg`` and of every nested config, depth first; raise :class:`ValueCheck`."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_config(value, f"{prefix}{f.name}.")
    check = getattr(cfg, "check", None)
    if check is not None:
        try:
            check()
        except ValueCheck as e:
            raise ValueCheck(prefix + e.key, e.message) from None


def require(condition: bool, key: str, message: str) -> None:
    """For ``check()`` methods: raise :class:`ValueCheck` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ValueCheck(key, message)


MAX_SEED = 2**32 - 1  # NumPy's seeding takes 32-bit seeds
MAX_BATCH = 4096
MAX_WORKERS = 256
MAX_SIDE = 16384  # pixels


def in_range(value: float, low: float, high: float, key: str) -> None:
    """For ``check()`` methods: ``low <= value <= high`` or a :class:`ValueCheck` for ``key``. Every
    numeric recipe value has an upper bound: an unbounded one (``rounds: 1e9``) hangs or exhausts memory
    instead of failing."""
    if not low <= value <= high:
        show = lambda x: str(x) if isinstance(x, int) else f"{x:g}"  # noqa: E731
        raise ValueCheck(key, f"must be in [{show(low)}, {show(high)}], got {brief(value)}")


def save_config(cfg: Any, path: str | Path, root: str | Path | None = None) -> None:
    from sfseg.fileio import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False), root)
