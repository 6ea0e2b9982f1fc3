"""The probe's harness: run one command in-process and check that it is refused cleanly (exit status 2,
one ``sfseg: error:`` line naming the file or key, no traceback, within bounded time and memory) and that
nothing was written, changed or deleted anywhere under the case's folder (nor in the victim file that
planted links point to)."""

from __future__ import annotations

import hashlib
import os
import re
import resource
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sfseg.cli.main import main

from ..conftest import SMALL_MODEL, source_args

LD = "configs/toycity/ld.yaml"
PRECIOUS = "precious\n"


def adapt_args(root, src, out, *extra, config: str = LD) -> list[str]:
    """A one-round LD run (or ``config``'s) on the tiny tree: fast enough for a case."""
    return ["adapt", "--config", config, f"data.root={root}", f"checkpoint={src}", f"out={out}",
            "rounds=1", "epochs_per_round=1", "batch_size=4", "amp=false", *extra]  # fmt: skip


@dataclass
class Env:
    """One case's world: ``tmp`` (everything below is watched), a copy of the tiny tree, a copy of the
    tiny source model, a scratch folder, and a victim file outside them all."""

    tmp: Path
    toy: Path
    src: Path
    scratch: Path
    victim: Path

    @property
    def out(self) -> Path:
        return self.scratch / "out"

    def adapt(self, *extra: str, out: Path | None = None, config: str = LD) -> list[str]:
        return adapt_args(self.toy, self.src, out or self.out, *extra, config=config)

    def source(self, *extra: str) -> list[str]:
        return source_args(self.toy, self.out / "s.pt", "epochs=1", SMALL_MODEL, *extra)

    def eval(self, *extra: str, checkpoint: Path | None = None) -> list[str]:
        return ["eval", "--checkpoint", str(checkpoint or self.src), "--data", str(self.toy), *extra]

    def checkpoint(self, edit) -> Path:
        """A copy of the tiny source checkpoint after ``edit(payload)``."""
        payload = torch.load(self.src, weights_only=True)
        edit(payload)
        path = self.scratch / "edited.pt"
        torch.save(payload, path)
        return path

    def file(self, name: str, data: str | bytes) -> Path:
        p = self.scratch / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    def link(self, path: Path, target: Path | None = None) -> Path:
        """Replace ``path`` (file or folder) by a symbolic link to ``target`` (default: the victim)."""
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target or self.victim)
        return path


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): kind, and content hash or link target."""
    out = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode) and name == ".sfseg-lock":
                out[rel] = ("lock",)  # the lock names its last holder: rewritten by whoever takes it
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


def _maxrss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(args: list) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        return int(e.code)


def refused(capsys, env: Env, args: list, expect: str, allow: tuple[str, ...] = (), seconds: float = 30):
    """Run ``args``; it must be refused cleanly (exit status 2, one ``sfseg: error:`` line, ``expect`` in
    it or in the listing that follows it), and change nothing under ``env.tmp`` except the paths that start
    with one of ``allow`` (relative to ``env.tmp``). Returns the error line."""
    capsys.readouterr()
    before = snapshot(env.tmp)
    rss, t0 = _maxrss_gib(), time.time()
    code = run(args)
    elapsed = time.time() - t0
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    # Progress bars (carriage returns, cursor moves) share stderr with the message.
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", err).replace("\r", "\n")
    # "sfseg: error:", or argparse's "sfseg <command>: error:" for a flag refused while parsing.
    lines = [ln.strip() for ln in plain.splitlines() if re.match(r"sfseg( [\w-]+)*: error:", ln.strip())]
    assert len(lines) == 1, err[-3000:]
    # The message is one line, or, for errors that list every bad file, one line and its listing.
    assert expect in lines[0] or expect in err + captured.out, err[-3000:]
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    assert _maxrss_gib() - rss < 1.5, "allocated more than 1.5 GiB"
    after = snapshot(env.tmp)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    changed = [k for k in changed if not k.startswith(allow)] if allow else changed
    assert not changed, f"changed: {changed[:10]}"
    assert env.victim.read_text() == PRECIOUS
    return lines[0]
