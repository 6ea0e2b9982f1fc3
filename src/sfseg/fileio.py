"""Writing files safely: atomically (readers see the old file or the new one, never a partial one), with
one readable error when the disk is full or a directory is read-only, and no temporary file left behind."""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from sfseg.errors import RunDirError

# Errors of the environment (not of sfseg): reported as one line naming the file.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file is larger than allowed here",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
}


def write_failure(path: Path, e: BaseException) -> RunDirError:
    """The error for a failed write of ``path``: its reason in words, and what was kept."""
    reason = ENVIRONMENT_ERRNOS.get(getattr(e, "errno", None)) or getattr(e, "strerror", None)
    if not reason:
        text = " ".join(str(e).split())
        reason = text[:160] or type(e).__name__
    return RunDirError(
        f"{path}: could not be written ({reason}); nothing was replaced (a previous {path.name}, if any, is "
        "intact). Free some space or choose another output location"
    )


def atomic_write_bytes(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)``, then rename onto ``path``: readers see the old file or the new one, never
    a partial one. A failure (full disk, read-only directory) removes the temporary file and raises one
    :class:`~sfseg.errors.RunDirError` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_failure(path, e) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` through :func:`atomic_write_bytes`. The object is serialised in memory first: the
    file is then written by Python, whose errors carry the reason (``torch.save`` writing to a full disk
    reports only "iostream error")."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            f.write(buffer.getbuffer())

    atomic_write_bytes(path, write)


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
