"""What in a run directory is sfseg's own, by name: the files ``--overwrite`` may delete (and nothing else,
inside its folders too), and the names where a planted symbolic link is refused before a run starts.

``round_<r>.pt``, ``figures/round_<r>.png``, ``pseudo_labels/round_<r>/00000.png`` ... are sfseg's; a
user's ``figures/notes.txt`` or ``round_best.pt`` is not, and is kept and listed.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from sfseg.fileio import refuse_links

MARKER, LOCK = ".sfseg-run", ".sfseg-lock"
OWN_FILES = (MARKER, "config.yaml", "metrics.jsonl", "state.pt", "summary.json", "final.pt", "selected.pt")
ROUND = re.compile(r"^round_(\d{1,6})\.pt$")
_TMP = r"\..+\.tmp"  # an interrupted atomic write (fileio.atomic_write_bytes)
# The files sfseg writes in the folders it makes in a run directory, by name, and the folders it makes in
# them: ``--overwrite`` deletes these and nothing else.
OWN_TREE: dict[str, tuple[list[str], dict]] = {
    "figures": ([r"source_model\.png", r"round_\d+\.png", r"pl_diagnostics\.png", _TMP], {}),
    "pseudo_labels": ([], {r"round_\d+": ([r"\d{5,}\.png"], {})}),
    "tensorboard": ([r"events\.out\.tfevents\..+"], {}),
    ".cache": ([r"cache\d+\.bin"], {}),
}


def _matches(name: str, patterns) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)


def is_regular(p: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(p).st_mode)
    except OSError:
        return False


def is_marked(folder: Path) -> bool:
    """Whether ``folder`` carries sfseg's run marker (a regular file, not a link)."""
    return is_regular(folder / MARKER)


def entries(folder: Path) -> list[str]:
    """The names in a run directory but its lock (none when it does not exist)."""
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK) if folder.is_dir() else []


def is_own_file(p: Path) -> bool:
    name = p.name
    return is_regular(p) and (
        name in OWN_FILES
        or bool(ROUND.match(name))
        or bool(re.fullmatch(_TMP, name))
        or name.startswith(".sfseg-write-test-")
    )


def refuse_planted_links(run: Path) -> None:
    """Refuse a symbolic link anywhere sfseg keeps a file of its own in this run directory (its own
    files and folders, the files in them, the lock, stage directories), before anything is read or
    written: the run would otherwise stop midway at the first one it meets. Links under other names
    (a user's own) are left alone."""
    if not run.is_dir():
        return
    for p in run.iterdir():
        name = p.name
        marked = p.is_dir() and is_marked(p)
        own = name in OWN_FILES or name == LOCK or bool(ROUND.match(name)) or name in OWN_TREE or marked
        if p.is_symlink() and own:
            refuse_links(p)
        elif name in OWN_TREE and p.is_dir():
            _refuse_links_in_tree(p, *OWN_TREE[name])
        elif marked:
            refuse_planted_links(p)


def clear(run: Path, keep_marker: bool = True) -> list[str]:
    """Delete the files sfseg writes here, by name, and the folders it made once they are empty (a
    marked stage directory inside is cleared the same way). Links are never followed nor deleted.
    Returns the paths (relative to the run directory) of everything kept."""
    kept = []
    for name in entries(run):
        p = run / name
        if p.is_symlink():
            kept.append(name)
        elif p.is_dir() and name in OWN_TREE:
            kept += [f"{name}/{k}" for k in _clear_tree(p, *OWN_TREE[name])]
        elif p.is_dir() and is_marked(p):
            rest = clear(p, keep_marker=False)
            if rest:
                kept += [f"{name}/{r}" for r in rest]
            else:
                (p / LOCK).unlink(missing_ok=True)
                p.rmdir()
        elif is_own_file(p) and (name != MARKER or not keep_marker):
            p.unlink()
        elif not (name == MARKER and keep_marker):
            kept.append(name)
    return kept


def _refuse_links_in_tree(folder: Path, files: list[str], dirs: dict) -> None:
    for p in folder.iterdir():
        sub = next((spec for pattern, spec in dirs.items() if re.fullmatch(pattern, p.name)), None)
        if p.is_symlink() and (sub is not None or _matches(p.name, files)):
            refuse_links(p)
        elif sub is not None and p.is_dir():
            _refuse_links_in_tree(p, *sub)


def _clear_tree(folder: Path, files: list[str], dirs: dict) -> list[str]:
    """Delete, in ``folder``, the regular files whose names match ``files`` and (recursively) the folders
    matching ``dirs``; remove ``folder`` when nothing else is left. Returns what was kept (relative)."""
    kept = []
    for p in sorted(folder.iterdir()):
        st = os.lstat(p)
        sub = next((spec for pattern, spec in dirs.items() if re.fullmatch(pattern, p.name)), None)
        if stat.S_ISDIR(st.st_mode) and sub is not None:
            kept += [f"{p.name}/{k}" for k in _clear_tree(p, *sub)]
        elif stat.S_ISREG(st.st_mode) and _matches(p.name, files):
            p.unlink()
        else:
            kept.append(p.name)
    if not kept:
        folder.rmdir()
    return kept
