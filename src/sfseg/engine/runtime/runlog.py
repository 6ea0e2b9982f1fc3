"""Run bookkeeping: seeding and an append-only metrics JSONL file."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from sfseg.errors import RunDirError
from sfseg.fileio import open_fd, read_bytes, write_failure

MAX_METRICS_BYTES = 256 * 2**20


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class MetricsLog:
    """Appends one JSON object per line; every record is flushed, so a crash loses nothing written.

    The file is opened without following links (``root``: the run directory it belongs to).

    Args:
        path: the file.
        enabled: False on every ``torchrun`` rank but 0 (records are dropped).
        root: the run directory; no link is followed below it.
    """

    def __init__(self, path: str | Path, enabled: bool = True, root: str | Path | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self.root = Path(root) if root is not None else self.path.parent

    def write(self, record: dict) -> None:
        """Append one record. A failed write (full disk) is rolled back, so the file never ends in a
        partial line, and raised as one error naming the file."""
        if not self.enabled:
            return
        line = json.dumps(record, default=_jsonable) + "\n"
        size = self.size()
        try:
            fd = open_fd(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, root=self.root)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as e:
            try:
                self.truncate(size)
            except OSError:
                pass
            raise write_failure(self.path, e) from None

    def size(self) -> int:
        """Bytes written so far (a resume point)."""
        try:
            return os.lstat(self.path).st_size
        except FileNotFoundError:
            return 0

    def truncate(self, size: int) -> None:
        """Drop what was written after ``size`` bytes (records of a run that was killed after its last
        saved state, which the resumed run writes again)."""
        if self.enabled and self.size() > size:
            fd = open_fd(self.path, os.O_WRONLY, root=self.root)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)

    def records(self) -> list[dict]:
        """Every record; a damaged line (a cut last line, say) is one error naming the file and line."""
        return read_records(self.path, self.root)


def read_records(path: Path, root: str | Path | None = None) -> list[dict]:
    """The records of a ``metrics.jsonl`` (no link followed below ``root``); ``[]`` when it is absent. A
    line that is not a JSON object is one error naming the file, the line and what to do."""
    try:
        data = read_bytes(path, MAX_METRICS_BYTES, root=root if root is not None else Path(path).parent,
                          what="metrics log")  # fmt: skip
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "phase" not in record:
            raise RunDirError(
                f"{path}, line {number}: not an sfseg metrics record (the file was cut or edited). Resume "
                "the run (sfseg adapt --resume) to rewrite it from its last saved state, or run it again"
            )
        records.append(record)
    return records


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
