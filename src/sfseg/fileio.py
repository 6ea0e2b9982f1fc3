"""Reading and writing files without trusting what is on disk.

Every file sfseg writes or reads back goes through here, so that each rule holds for every command:

* **Atomic writes**: readers see the old file or the new one, never a partial one; a full disk or a
  read-only directory is one readable error naming the file, and no temporary file is left behind.
* **No links followed where sfseg keeps its own files.** Given the directory that owns a file (``root``:
  a run directory), every component between the two is checked with ``lstat`` and the file itself is
  opened with ``O_NOFOLLOW``: a symbolic link planted in a run directory makes sfseg stop with one error
  naming it, never write through it (truncating or appending to the file it points to) nor read it.
  An atomic write never replaces a link either, anywhere.
* **Regular files only**: a FIFO or a device named like a data file is refused at once (opened without
  blocking, then checked with ``fstat``), never read from.
* **Sizes bounded before memory is allocated**: :func:`read_bytes` refuses a file larger than the limit
  its caller names.
* **Outputs never overwrite inputs**: :func:`check_outputs` resolves a command's outputs and inputs (real
  paths, after links) and refuses an output that is, contains, or lies inside one of its inputs, before
  anything is written.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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


class LinkError(RunDirError):
    """A symbolic link where sfseg keeps (or reads back) a file of its own."""


class NotRegularError(RunDirError):
    """A path that names a FIFO, a device, a socket or a directory where a file is expected."""


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


# ------------------------------------------------------------------------------------------------ links
def _link_error(path: Path) -> LinkError:
    return LinkError(
        f"{path} is a symbolic link where sfseg keeps a file of its own; sfseg does not follow it (it could "
        "overwrite or expose the file it points to). Remove the link and run again"
    )


def refuse_links(path: str | Path, root: str | Path | None = None) -> Path:
    """Refuse a symbolic link at ``path`` and, when ``root`` is given, at every directory between ``root``
    (which may itself be a link: the user's choice) and ``path``. Returns ``path``.

    Raises:
        LinkError: naming the first link found.
        RunDirError: ``path`` does not lie below ``root``.
    """
    path = Path(path)
    chain = [path]
    if root is not None:
        root = Path(root)
        try:
            rel = path.relative_to(root)
        except ValueError:
            raise RunDirError(f"{path} is not inside {root}") from None
        chain, here = [], root
        for part in rel.parts:
            here = here / part
            chain.append(here)
    for p in chain:
        if os.path.islink(p):
            raise _link_error(p)
    return path


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_fd(path: str | Path, flags: int, root: str | Path | None = None, mode: int = 0o644) -> int:
    """``os.open`` that never blocks on a FIFO and never follows a link below ``root``.

    The file is opened non-blocking (a FIFO opened for reading would wait for a writer forever), checked
    to be a regular file with ``fstat``, and switched back to blocking. With ``root``, the file itself is
    opened with ``O_NOFOLLOW`` and the directories between ``root`` and it are checked for links.

    Raises:
        LinkError: a link at the file or between ``root`` and it.
        NotRegularError: the path names something other than a regular file.
        OSError: the environment's errors (missing file, permission), unchanged.
    """
    path = Path(path)
    if root is not None:
        refuse_links(path.parent, root) if path.parent != Path(root) else None
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP and root is not None:
            raise _link_error(path) from None
        if e.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise NotRegularError(
                f"{path} is a FIFO, not a regular file; remove it or choose another path"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularError(
                f"{path} is {_kind(st.st_mode)}, not a regular file; sfseg reads and writes regular files"
            )
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: str | Path, mode: str = "rb", root: str | Path | None = None):
    """A file object of :func:`open_fd` (``mode``: ``rb``, ``r+b``, ``ab``, ``wb``; text modes too)."""
    base = mode.replace("t", "").replace("b", "")
    flags = {
        "r": os.O_RDONLY,
        "r+": os.O_RDWR,
        "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
        "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
        "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    }[base]
    fd = open_fd(path, flags, root)
    return os.fdopen(fd, mode)


def read_bytes(
    path: str | Path, limit: int | None = None, root: str | Path | None = None, what: str = "file"
) -> bytes:
    """The contents of a regular file, refused (before reading) when larger than ``limit`` bytes.

    Raises:
        RunDirError: a link below ``root``, not a regular file, or larger than ``limit``.
        OSError: the environment's errors (missing, permission), unchanged.
    """
    with open_file(path, "rb", root) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            raise RunDirError(
                f"{path}: the {what} is {size:,} bytes, more than sfseg reads ({limit:,}); the right file?"
            )
        data = f.read(limit + 1 if limit is not None else -1)
    if limit is not None and len(data) > limit:
        raise RunDirError(f"{path}: the {what} grew beyond {limit:,} bytes while it was read")
    return data


def read_text(path: str | Path, limit: int, what: str, error: type[Exception] = RunDirError) -> str:
    """A bounded UTF-8 text file that the user gives (a recipe, a list file): every way it cannot be read
    is one ``error`` naming ``path``, the ``what`` and the fix."""
    try:
        return read_bytes(path, limit, what=what).decode("utf-8")
    except RunDirError as e:
        raise error(str(e)) from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}); save the {what} as UTF-8") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror})") from None


# ---------------------------------------------------------------------------------------------- writing
def atomic_write_bytes(path: Path, write: Callable[[Path], object], root: str | Path | None = None) -> None:
    """Call ``write(tmp_path)``, then rename onto ``path``: readers see the old file or the new one, never
    a partial one. The temporary file gets a fresh name (created exclusively, so no planted link is
    followed); ``path`` itself must not be a link (a rename would replace the link, which is never what
    the user meant) nor, below ``root``, lie under one. Missing folders above it are made (only now, when
    the file is written). A failure (full disk, read-only directory) removes the temporary file and
    raises one :class:`~sfseg.errors.RunDirError` naming ``path``."""
    path = Path(path)
    refuse_links(path, root)
    tmp = None
    try:
        if not path.parent.is_dir():
            if root is not None:
                make_dirs(path.parent, root)
            else:
                path.parent.mkdir(parents=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise write_failure(path, e) from None
    finally:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


def atomic_torch_save(obj, path: Path, root: str | Path | None = None) -> None:
    """``torch.save`` through :func:`atomic_write_bytes`. The object is serialised in memory first: the
    file is then written by Python, whose errors carry the reason (``torch.save`` writing to a full disk
    reports only "iostream error")."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            f.write(buffer.getbuffer())

    atomic_write_bytes(path, write, root)


def atomic_write_text(path: Path, text: str, root: str | Path | None = None) -> None:
    atomic_write_bytes(path, lambda p: Path(p).write_text(text), root)


def make_dirs(path: str | Path, root: str | Path) -> Path:
    """``mkdir -p`` of ``path`` below ``root``, refusing a link at any level (an existing one, or one
    planted between two ``mkdir`` calls). Returns ``path``."""
    path, root = Path(path), Path(root)
    here = root
    for part in path.relative_to(root).parts:
        here = here / part
        try:
            here.mkdir()
        except FileExistsError:
            pass
        st = os.lstat(here)
        if stat.S_ISLNK(st.st_mode):
            raise _link_error(here)
        if not stat.S_ISDIR(st.st_mode):
            raise RunDirError(f"{here} exists and is not a directory; sfseg keeps a folder of its own there")
    return path


def check_writable_dir(path: Path, what: str) -> None:
    """``path`` is, or can be created as, a writable directory: a clear error otherwise. Nothing is
    created (a command refused later leaves no empty folder behind): the deepest existing folder on the
    way is proved writable with a probe file of its own, which is removed."""
    path = Path(path)
    here = path
    while not os.path.lexists(here) and here != here.parent:
        here = here.parent
    if os.path.lexists(here) and not here.is_dir():
        where = "" if here == path else f" (its part {here})"
        raise RunDirError(f"{what} {path}{where} exists and is not a directory; choose another path")
    try:
        # A probe of its own per process: ranks of a torchrun job check the same directory at once.
        with tempfile.NamedTemporaryFile(dir=here, prefix=".sfseg-write-test-"):
            pass
    except OSError as e:
        where = "" if here == path else f" (its folder {here})"
        raise RunDirError(
            f"{what} {path}{where} is not writable ({e.strerror}); choose another path"
        ) from None


def check_writable_file(path: Path, what: str) -> None:
    """``path`` can be written as a file: it is not a directory, not a link, not a FIFO or device, and its
    directory is writable."""
    path = Path(path)
    if str(path).strip() in ("", "."):
        raise RunDirError(f"{what} is empty; give a file path")
    if path.is_symlink():
        raise LinkError(
            f"{what} {path} is a symbolic link; sfseg replaces files atomically and will not replace a link "
            "(nor write through it). Give the real path, or remove the link"
        )
    if path.is_dir():
        raise RunDirError(f"{what} {path} is a directory; give a file path (e.g. {path / 'model.pt'})")
    if path.exists() and not path.is_file():
        raise NotRegularError(f"{what} {path} is {_kind(path.stat().st_mode)}, not a regular file")
    try:
        check_writable_dir(path.parent, "directory")
    except RunDirError as e:
        raise RunDirError(f"{what} {path} cannot be written: {e}") from None


# -------------------------------------------------------------------------------- outputs versus inputs
@dataclass(frozen=True)
class Place:
    """A path a command reads or writes, named as the user gave it (``--checkpoint``, ``data.root``).

    Attributes:
        what: the option or key that named it, for messages.
        path: the path (None or "" when the option was not given: then it is skipped).
        tree: an input directory whose whole content is read (a dataset root): no output may lie inside it.
    """

    what: str
    path: str | Path | None
    tree: bool = False

    @property
    def given(self) -> bool:
        return self.path is not None and str(self.path) != ""


def _real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _inside(inner: Path, outer: Path) -> bool:
    return inner != outer and outer in inner.parents


def check_outputs(outputs: Iterable[Place], inputs: Iterable[Place]) -> None:
    """Refuse, before anything is written, an output that is one of the inputs, contains one (an output
    directory an input lies in), or lies inside an input tree. Paths are compared as real paths (links
    resolved), so a link or a ``..`` cannot hide the overlap.

    Raises:
        RunDirError: naming both paths and the options that gave them.
    """
    ins = [(p, _real(Path(p.path))) for p in inputs if p.given]
    for o in outputs:
        if not o.given:
            continue
        ro = _real(Path(o.path))
        for i, ri in ins:
            if ro == ri:
                problem = f"is {i.what} {i.path}"
            elif _inside(ri, ro):
                problem = f"contains {i.what} {i.path}"
            elif i.tree and _inside(ro, ri):
                problem = f"lies inside {i.what} {i.path}"
            else:
                continue
            raise RunDirError(
                f"{o.what} {o.path} {problem}: writing it could overwrite or mix with the command's own "
                "input. Choose an output outside the inputs"
            )
