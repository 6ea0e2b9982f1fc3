"""Run bookkeeping: seeding and an append-only metrics JSONL file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from sfseg.fileio import write_failure


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
        """Append one record. A failed write (full disk) is rolled back, so the file never ends in a
        partial line, and raised as one error naming the file."""
        if not self.enabled:
            return
        line = json.dumps(record, default=_jsonable) + "\n"
        size = self.size()
        try:
            with self.path.open("a") as f:
                f.write(line)
        except OSError as e:
            try:
                self.truncate(size)
            except OSError:
                pass
            raise write_failure(self.path, e) from None

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
