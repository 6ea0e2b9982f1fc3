"""The adversarial probe's shared part: bad inputs and faults across every command, as a new user or an
attacker would try them. Each case must end with exit status 2, one readable message naming the key or the
file (no traceback), within seconds, and without writing or losing anything (:func:`.probe.refused`, run on
the ``env`` fixture of ``conftest.py``). The cases live in ``test_refused_<group>.py``, one file per group of
commands; the helpers below build their inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from sfseg.cli.main import main

from .probe import Env


def bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + f"\nname: *a{levels - 1}\n"


def spoiled(env: Env, value: float) -> Path:
    """The tiny source checkpoint with one weight tensor filled with ``value`` (NaN, inf)."""

    def fill(payload):
        next(v for v in payload["state_dict"].values() if v.is_floating_point()).fill_(value)

    return env.checkpoint(fill)


def replace_image(env: Env, rel: str, array: np.ndarray) -> None:
    Image.fromarray(array).save(env.toy / rel)


def sixteen_bit(env: Env) -> None:
    h, w = np.asarray(Image.open(env.toy / "target/images/train/00001.png")).shape[:2]
    replace_image(
        env, "target/images/train/00001.png", (np.arange(h * w).reshape(h, w) * 37 % 65536).astype(np.uint16)
    )


def rewrite_list(env: Env, name: str, edit) -> None:
    path = env.toy / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def prediction_folder(env: Env, write) -> Path:
    """A folder of trainId predictions for the target val split, one of which ``write`` spoils."""
    folder = env.scratch / "preds"
    assert main(["predict", "--checkpoint", str(env.src), "--data", str(env.toy), "--out", str(folder),
                 "--format", "trainid"]) == 0  # fmt: skip
    write(sorted(folder.rglob("*.png"))[0])
    return folder


def folder_tree(env: Env) -> Path:
    """A user's own folder dataset (images/ and labels/) with one pair."""
    root = env.scratch / "folder"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    shutil.copy(env.toy / "target/images/val/00000.png", root / "images/a.png")
    shutil.copy(env.toy / "target/labels/val/00000.png", root / "labels/a.png")
    return root


def run_dir(env: Env, *files: str) -> Path:
    run = env.scratch / "run"
    run.mkdir()
    for f in files:
        (run / f).write_text("{}\n" if f.endswith(".jsonl") else "x: 1\n")
    return run
