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
  the marker, and then only the entries named above (anything else is kept and reported);
* one process per run directory: :meth:`RunDir.lock` takes an advisory ``flock`` that the operating
  system releases when the process ends, however it ends; a second process gets an error naming the
  holder's pid and host.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

from sfseg.errors import RunDirError

MARKER_FORMAT = "sfseg-run-dir-v1"
_ROUND = re.compile(r"^round_(\d{1,6})\.pt$")
_HELD: dict[str, int] = {}  # lock files this process holds (resolved path -> fd): locking is idempotent


class RunDir:
    """The paths and the bookkeeping of one run directory.

    Args:
        path: the directory (it need not exist yet).
    """

    MARKER = ".sfseg-run"
    LOCK = ".sfseg-lock"
    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    STATE = "state.pt"
    SUMMARY = "summary.json"
    FINAL = "final.pt"
    SELECTED = "selected.pt"
    OWN_FILES = (MARKER, CONFIG, METRICS, STATE, SUMMARY, FINAL, SELECTED)
    OWN_DIRS = ("pseudo_labels", "tensorboard", "figures", ".cache")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------------------------------- names
    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def final(self) -> Path:
        return self.path / self.FINAL

    @property
    def selected(self) -> Path:
        return self.path / self.SELECTED

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def cache(self) -> Path:
        return self.path / ".cache"

    @property
    def diagnostics_figure(self) -> Path:
        """The pseudo-label diagnostics of every round so far (where the split has labels)."""
        return self.path / "figures" / "pl_diagnostics.png"

    def prediction_grid(self, r: int) -> Path:
        """The round's picture of fixed images (r = -1: the starting model)."""
        return self.figures / ("source_model.png" if r < 0 else f"round_{r}.png")

    def prediction_grids(self) -> list[tuple[int, Path]]:
        """``(round, path)`` of the prediction grids drawn so far, the starting model first."""
        out = [(-1, self.prediction_grid(-1))] if self.prediction_grid(-1).is_file() else []
        if self.figures.is_dir():
            for p in self.figures.iterdir():
                m = _ROUND.match(p.name.replace(".png", ".pt"))
                if m and p.suffix == ".png":
                    out.append((int(m.group(1)), p))
        return sorted(out)

    def round_checkpoint(self, r: int) -> Path:
        return self.path / f"round_{r}.pt"

    def round_checkpoints(self) -> list[tuple[int, Path]]:
        """``(round, path)`` of every ``round_<r>.pt``, in round order. Files with other names (a user's
        ``round_best.pt``, say) are not rounds and are ignored."""
        found = []
        if self.path.is_dir():
            for p in self.path.iterdir():
                m = _ROUND.match(p.name)
                if m and p.is_file():
                    found.append((int(m.group(1)), p))
        return sorted(found)

    def pseudo_labels(self, r: int) -> Path:
        return self.path / "pseudo_labels" / f"round_{r}"

    def stage(self, name: str) -> RunDir:
        """The run directory of a two-stage recipe's first stage (``<out>/<name>``)."""
        return RunDir(self.path / name)

    # ------------------------------------------------------------------------------------------ marker
    @property
    def is_marked(self) -> bool:
        return (self.path / self.MARKER).is_file()

    def marker(self) -> dict | None:
        """The marker's record, or None when the directory carries none (or an unreadable one)."""
        try:
            data = json.loads((self.path / self.MARKER).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else None

    def write_marker(self) -> None:
        from sfseg.fileio import atomic_write_text

        record = {
            "format": MARKER_FORMAT,
            "run_id": uuid.uuid4().hex,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
        }
        atomic_write_text(self.path / self.MARKER, json.dumps(record) + "\n")

    def is_run(self) -> bool:
        """Whether the directory holds an sfseg run: the marker, or (runs of sfseg before the marker) a
        resumable state."""
        return self.is_marked or self.state.is_file()

    # -------------------------------------------------------------------------------------------- lock
    def lock(self) -> None:
        """Take the directory's advisory lock for the life of this process (or until :meth:`unlock`).

        Raises:
            RunDirError: another process holds it (its pid and host are named).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / self.LOCK
        key = str(path.resolve())
        if key in _HELD:
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
        """Make the directory this run's: lock it, then (``new``) check it is empty, (``overwrite``) clear
        an earlier sfseg run from it, or (``resume``) check it holds a run; write the marker.

        Nothing is deleted unless the directory carries sfseg's marker, and then only sfseg's own entries.

        Args:
            mode: ``new``, ``overwrite`` or ``resume``.
        """
        out = self.path
        if str(out).strip() in ("", "."):
            raise RunDirError("the run directory (out) is empty or '.'; give a directory such as runs/ld")
        if out.exists() and not out.is_dir():
            raise RunDirError(f"run directory {out} exists and is not a directory; choose another out")
        from sfseg.fileio import check_writable_dir

        check_writable_dir(out, "run directory")
        self.lock()
        entries = self._entries()
        if mode == "new" and entries:
            what = "another run's files" if self.is_run() else "other files"
            raise RunDirError(
                f"run directory {out} already holds {what} ({_listing(entries)}); use --resume to continue "
                "that run, --overwrite to clear it first, or another out"
            )
        if mode == "overwrite" and entries:
            if not self.is_marked:
                raise RunDirError(
                    f"{out} does not carry sfseg's run marker ({self.MARKER}), so sfseg will not delete "
                    f"anything in it ({_listing(entries)}). If it is an old run, delete it yourself; "
                    "otherwise choose another out"
                )
            kept = self.clear()
            if kept:
                print(f"{out}: kept {len(kept)} entries sfseg did not write: {_listing(kept)}")
        if mode == "resume" and not self.is_run():
            raise RunDirError(f"{out} holds no sfseg run to resume (no {self.MARKER} or {self.STATE})")
        if not self.is_marked:
            self.write_marker()

    def _entries(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name != self.LOCK)

    def _is_own(self, p: Path) -> bool:
        name = p.name
        if p.is_symlink():
            return False
        if p.is_dir():
            return name in self.OWN_DIRS or RunDir(p).is_marked
        return (
            name in self.OWN_FILES
            or bool(_ROUND.match(name))
            or (name.startswith(".") and name.endswith(".tmp"))  # an interrupted atomic write
        )

    def clear(self, keep_marker: bool = True) -> list[str]:
        """Delete sfseg's own entries (a marked stage directory inside is cleared the same way and removed
        when nothing else remains in it). Returns the names of the entries kept."""
        kept = []
        for name in self._entries():
            p = self.path / name
            if not self._is_own(p):
                kept.append(name)
            elif p.is_dir() and p.name not in self.OWN_DIRS:
                inner = RunDir(p)
                rest = inner.clear(keep_marker=False)
                if rest:
                    kept += [f"{name}/{r}" for r in rest]
                else:
                    (p / self.LOCK).unlink(missing_ok=True)
                    p.rmdir()
            elif p.is_dir():
                shutil.rmtree(p)
            elif name != self.MARKER or not keep_marker:
                p.unlink()
        return kept


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {int(data['pid'])} on host {str(data['host'])[:100]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")
