"""A run directory, as one object: every file name of a run, its ownership marker and its lock.

Layout of ``<out>/`` (one ``sfseg adapt`` run)::

    .sfseg-run            marker: written when sfseg claims the directory (format, run id, creation time)
    .sfseg-lock           advisory lock held by the process running it (pid and host inside)
    config.yaml           the recipe
    metrics.jsonl         one JSON record per event (the source of truth)
    state.pt              the resumable state
    summary.json          written when the run finishes
    round_<r>.pt          the model after round r
    final.pt              the model after the last round (the reported one)
    selected.pt           the model a label-free validator preferred (when the recipe asks)
    pseudo_labels/round_<r>/00000.png ...
    tensorboard/, figures/, .cache/
    <stage>/              the first stage of a two-stage recipe (LDBE: ``ld/``), itself a run directory

Safety rules, each tested:

* sfseg deletes only what it can prove is its own: ``--overwrite`` clears a directory only when it carries
  the marker, and then only the files it writes, by name (``round_<r>.pt``, ``figures/round_<r>.png``,
  ``pseudo_labels/round_<r>/00000.png``, ...): anything else, inside its folders too, is kept and listed;
* one process per run directory: :meth:`RunDir.lock` takes an advisory ``flock`` that the operating
  system releases when the process ends, however it ends; a second process gets an error naming the
  holder's pid and host. The lock is taken only in a directory known to be a run (or new and empty), so a
  refused command leaves nothing behind in a folder of the user's;
* no link is followed inside a run directory: files are opened with ``O_NOFOLLOW`` and the folders
  between the run directory and a file are checked (:func:`sfseg.fileio.refuse_links`); a link where a
  run file should be is one error naming it.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import uuid
from pathlib import Path

from sfseg.engine.runtime import ownership
from sfseg.engine.runtime.ownership import LOCK, MARKER, OWN_FILES, OWN_TREE, ROUND, is_regular
from sfseg.errors import RunDirError
from sfseg.fileio import (
    atomic_write_text,
    check_writable_dir,
    make_dirs,
    open_fd,
    read_bytes,
    refuse_links,
)

MARKER_FORMAT = "sfseg-run-dir-v1"
_HELD: dict[str, int] = {}  # lock files this process holds (resolved path -> fd): locking is idempotent
MAX_JSON_BYTES = 256 * 2**20
"""The largest run record (summary.json, metrics.jsonl) sfseg reads back."""


class _Entry:
    """A run directory's file or folder of that name, as an attribute: ``run.config`` is
    ``run.path / "config.yaml"``."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, run: RunDir, owner=None) -> Path:
        return run.path / self.name


class RunDir:
    """The paths and the bookkeeping of one run directory.

    Args:
        path: the directory (it need not exist yet).
    """

    MARKER, LOCK = MARKER, LOCK
    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    STATE = "state.pt"
    SUMMARY = "summary.json"
    FINAL = "final.pt"
    SELECTED = "selected.pt"
    OWN_FILES = OWN_FILES
    OWN_DIRS = tuple(OWN_TREE)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------------------------------- names
    config = _Entry(CONFIG)
    metrics = _Entry(METRICS)
    state = _Entry(STATE)
    summary = _Entry(SUMMARY)
    final = _Entry(FINAL)
    selected = _Entry(SELECTED)
    tensorboard = _Entry("tensorboard")
    figures = _Entry("figures")
    cache = _Entry(".cache")

    @property
    def diagnostics_figure(self) -> Path:
        """The pseudo-label diagnostics of every round so far (where the split has labels)."""
        return self.path / "figures" / "pl_diagnostics.png"

    def prediction_grid(self, r: int) -> Path:
        """The round's picture of fixed images (r = -1: the starting model)."""
        return self.figures / ("source_model.png" if r < 0 else f"round_{r}.png")

    def prediction_grids(self) -> list[tuple[int, Path]]:
        """``(round, path)`` of the prediction grids drawn so far, the starting model first: regular files
        only (a link or anything else planted under ``figures/`` is not one)."""
        out = []
        if self.figures.is_dir():
            refuse_links(self.figures, self.path)
            for p in self.figures.iterdir():
                m = ROUND.match(p.name.replace(".png", ".pt"))
                r = (
                    -1
                    if p.name == "source_model.png"
                    else int(m.group(1))
                    if m and p.suffix == ".png"
                    else None
                )
                if r is None:
                    continue
                refuse_links(p, self.path)  # a link with a grid's name: an error, never embedded
                if is_regular(p):
                    out.append((r, p))
        return sorted(out)

    def round_checkpoint(self, r: int) -> Path:
        return self.path / f"round_{r}.pt"

    def round_checkpoints(self) -> list[tuple[int, Path]]:
        """``(round, path)`` of every ``round_<r>.pt``, in round order. Files with other names (a user's
        ``round_best.pt``, say) are not rounds and are ignored; a link with a round's name is an error."""
        found = []
        if self.path.is_dir():
            for p in self.path.iterdir():
                m = ROUND.match(p.name)
                if m:
                    refuse_links(p, self.path)
                    if p.is_file():
                        found.append((int(m.group(1)), p))
        return sorted(found)

    def pseudo_labels(self, r: int) -> Path:
        return self.path / "pseudo_labels" / f"round_{r}"

    def stage(self, name: str) -> RunDir:
        """The run directory of a two-stage recipe's first stage (``<out>/<name>``)."""
        return RunDir(self.path / name)

    # --------------------------------------------------------------------------------- safe file access
    def check(self, path: Path) -> Path:
        """``path`` (a file of this run), refused when it, or a folder between the run directory and it,
        is a symbolic link."""
        return refuse_links(path, self.path)

    def mkdir(self, path: Path) -> Path:
        """Make a folder of this run (``figures/``, ``pseudo_labels/round_0``), refusing links."""
        return make_dirs(path, self.path)

    def read_bytes(self, path: Path, limit: int | None = None, what: str = "file") -> bytes:
        """A file of this run, read without following links, refused beyond ``limit`` bytes."""
        return read_bytes(path, limit, root=self.path, what=what)

    def read_json(self, path: Path) -> dict | list:
        """A JSON file of this run (``summary.json``); a damaged one is one error naming it."""
        try:
            return json.loads(self.read_bytes(path, MAX_JSON_BYTES, "run record"))
        except FileNotFoundError:
            raise RunDirError(
                f"{path} is missing; the run did not finish (resume it or run it again)"
            ) from None
        except (ValueError, UnicodeDecodeError):
            raise RunDirError(
                f"{path} is damaged (not complete JSON); run the run again (or resume it if it has not "
                "finished), or delete the file"
            ) from None

    # ------------------------------------------------------------------------------------------ marker
    @property
    def is_marked(self) -> bool:
        return is_regular(self.path / self.MARKER)

    def marker(self) -> dict | None:
        """The marker's record, or None when the directory carries none (or an unreadable one)."""
        try:
            data = json.loads(self.read_bytes(self.path / self.MARKER, 4096))
        except (OSError, ValueError, RunDirError):
            return None
        return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else None

    def write_marker(self) -> None:
        record = {
            "format": MARKER_FORMAT,
            "run_id": uuid.uuid4().hex,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
        }
        atomic_write_text(self.path / self.MARKER, json.dumps(record) + "\n", root=self.path)

    def is_run(self) -> bool:
        """Whether the directory holds an sfseg run: the marker, or (runs of sfseg before the marker) a
        resumable state."""
        return self.is_marked or is_regular(self.state)

    def refuse_planted_links(self) -> None:
        """Refuse a symbolic link where sfseg keeps a file of its own here (see :mod:`.ownership`)."""
        ownership.refuse_planted_links(self.path)

    # -------------------------------------------------------------------------------------------- lock
    def lock(self) -> None:
        """Take the directory's advisory lock for the life of this process (or until :meth:`unlock`).

        Only in a directory known to be a run, or a new (empty) one: a command that refuses a folder of
        the user's leaves nothing in it.

        Raises:
            RunDirError: another process holds it (its pid and host are named), or the directory holds
                files but no run.
        """
        path = self.path / self.LOCK
        key = str(path.resolve())
        if key in _HELD:
            return
        if self.path.is_dir() and not self.is_run() and self.entries():
            raise RunDirError(
                f"{self.path} holds files but no sfseg run ({_listing(self.entries())}); sfseg will not "
                "take it over. Choose another out"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            fd = open_fd(path, os.O_RDWR | os.O_CREAT, root=self.path)
        except OSError as e:
            raise RunDirError(
                f"run directory {self.path}: cannot create its lock file ({e.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise RunDirError(
                    f"run directory {self.path} is in use by another sfseg process ({holder}); wait for it "
                    "to finish or stop it, or choose another out"
                ) from None
            raise RunDirError(f"run directory {self.path}: cannot lock it ({e.strerror})") from None
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        _HELD[key] = fd

    def unlock(self) -> None:
        """Release the lock this process holds on the directory (a no-op when it holds none)."""
        fd = _HELD.pop(str((self.path / self.LOCK).resolve()), None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ------------------------------------------------------------------------------------------- claim
    def claim(self, mode: str) -> None:
        """Make the directory this run's: check it (``new``: empty; ``overwrite``: empty or an earlier
        sfseg run, cleared; ``resume``: a run), then lock it and write the marker.

        Every check that can refuse runs before anything is created, so a refused command leaves the
        directory as it found it. Nothing is deleted unless the directory carries sfseg's marker, and then
        only the files sfseg writes.

        Args:
            mode: ``new``, ``overwrite`` or ``resume``.
        """
        out = self.path
        if str(out).strip() in ("", "."):
            raise RunDirError("the run directory (out) is empty or '.'; give a directory such as runs/ld")
        if out.is_symlink() and not out.exists():
            raise RunDirError(f"run directory {out} is a link to nothing; remove it or choose another out")
        if out.exists() and not out.is_dir():
            raise RunDirError(f"run directory {out} exists and is not a directory; choose another out")
        self._check_mode(mode)
        self.refuse_planted_links()
        check_writable_dir(out, "run directory")
        self.lock()
        self._check_mode(mode)  # again, under the lock: another process may have written meanwhile
        if mode == "overwrite" and self.entries():
            kept = self.clear()
            if kept:
                print(f"{out}: kept {len(kept)} entries sfseg did not write: {_listing(kept)}")
        if not self.is_marked:
            self.write_marker()

    def _check_mode(self, mode: str) -> None:
        out, entries = self.path, self.entries()
        if mode == "new" and entries:
            what = "another run's files" if self.is_run() else "other files"
            raise RunDirError(
                f"run directory {out} already holds {what} ({_listing(entries)}); use --resume to continue "
                "that run, --overwrite to clear it first, or another out"
            )
        if mode == "overwrite" and entries and not self.is_marked:
            raise RunDirError(
                f"{out} does not carry sfseg's run marker ({self.MARKER}), so sfseg will not delete "
                f"anything in it ({_listing(entries)}). If it is an old run, delete it yourself; "
                "otherwise choose another out"
            )
        if mode == "resume" and not self.is_run():
            raise RunDirError(f"{out} holds no sfseg run to resume (no {self.MARKER} or {self.STATE})")

    def entries(self) -> list[str]:
        return ownership.entries(self.path)

    def clear(self, keep_marker: bool = True) -> list[str]:
        """Delete the files sfseg writes here, by name; returns what was kept (see :mod:`.ownership`)."""
        return ownership.clear(self.path, keep_marker)

    def input_files(self) -> list[Path]:
        """The files of this run a command reading it may read (for :func:`sfseg.fileio.check_outputs`)."""
        names = [self.config, self.metrics, self.summary, self.state, self.final, self.selected]
        return (
            [p for p in names if p.exists()]
            + [p for _, p in self.round_checkpoints()]
            + [p for _, p in self.prediction_grids()]
        )


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {int(data['pid'])} on host {str(data['host'])[:100]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")
