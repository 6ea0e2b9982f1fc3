"""Run bookkeeping: seeding, an append-only metrics JSONL file, atomic files and run directories."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from sfseg.errors import RunDirError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class MetricsLog:
    """Appends one JSON object per line; every record is flushed, so a crash loses nothing written.

    Args:
        path: the file.
        enabled: False on every ``torchrun`` rank but 0 (records are dropped).
    """

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")

    def size(self) -> int:
        """Bytes written so far (a resume point)."""
        return self.path.stat().st_size if self.path.is_file() else 0

    def truncate(self, size: int) -> None:
        """Drop what was written after ``size`` bytes (records of a run that was killed after its last
        saved state, which the resumed run writes again)."""
        if self.enabled and self.path.is_file() and self.path.stat().st_size > size:
            with self.path.open("r+b") as f:
                f.truncate(size)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename onto ``path``: readers see the old file or the new one, never
    a partial one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write_bytes(path, lambda p: torch.save(obj, p))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda p: Path(p).write_text(text))


def check_writable_dir(path: Path, what: str) -> None:
    """Create ``path`` if needed and prove it writable with a probe file; a clear error otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{what} {path} exists and is not a directory; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A probe of its own per process: ranks of a torchrun job check the same directory at once.
        with tempfile.NamedTemporaryFile(dir=path, prefix=".sfseg-write-test-"):
            pass
    except OSError as e:
        raise RunDirError(f"{what} {path} is not writable ({e.strerror}); choose another path") from None


def check_writable_file(path: Path, what: str) -> None:
    """``path`` can be written as a file: it is not a directory and its directory is writable."""
    path = Path(path)
    if str(path).strip() in ("", "."):
        raise RunDirError(f"{what} is empty; give a file path")
    if path.is_dir():
        raise RunDirError(f"{what} {path} is a directory; give a file path (e.g. {path / 'model.pt'})")
    try:
        check_writable_dir(path.parent, "directory")
    except RunDirError as e:
        raise RunDirError(f"{what} {path} cannot be written: {e}") from None
