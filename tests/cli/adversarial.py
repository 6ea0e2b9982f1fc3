"""The adversarial probe's shared part: bad inputs and faults across every command, as a new user or an
attacker would try them. Each case must end with exit status 2, one readable message naming the key or the
file (no traceback), within seconds, and without writing or losing anything. The cases live in
``test_refused_<group>.py``, one file per group of commands."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sfseg.cli.main import main

LD = "configs/toycity/ld.yaml"
SRC = "configs/toycity/source.yaml"


@dataclass
class Env:
    """What a case may use: a private copy of the tiny ToyCity tree, the tiny source checkpoint, a scratch
    directory (``out`` must stay absent)."""

    toy: Path
    src: Path
    tmp: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def adapt(self, *extra: str, config: str = LD) -> list[str]:
        return ["adapt", "--config", config, f"data.root={self.toy}", f"checkpoint={self.src}",
                f"out={self.out}", "rounds=1", "epochs_per_round=1", "batch_size=4", *extra]  # fmt: skip

    def source(self, *extra: str) -> list[str]:
        return ["train-source", "--config", SRC, f"data.root={self.toy}", f"out={self.out / 's.pt'}",
                "epochs=1", "arch_kwargs={width: 8, output_stride: 4}", *extra]  # fmt: skip

    def eval(self, *extra: str, checkpoint: Path | None = None) -> list[str]:
        return ["eval", "--checkpoint", str(checkpoint or self.src), "--data", str(self.toy), *extra]

    def file(self, name: str, data: str | bytes) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    def checkpoint(self, edit) -> Path:
        payload = torch.load(self.src, weights_only=True)
        edit(payload)
        path = self.tmp / "edited.pt"
        torch.save(payload, path)
        return path


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
    folder = env.tmp / "preds"
    assert main(["predict", "--checkpoint", str(env.src), "--data", str(env.toy), "--out", str(folder),
                 "--format", "trainid"]) == 0  # fmt: skip
    write(sorted(folder.rglob("*.png"))[0])
    return folder


def folder_tree(env: Env) -> Path:
    """A user's own folder dataset (images/ and labels/) with one pair."""
    root = env.tmp / "folder"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    shutil.copy(env.toy / "target/images/val/00000.png", root / "images/a.png")
    shutil.copy(env.toy / "target/labels/val/00000.png", root / "labels/a.png")
    return root


def run_dir(env: Env, *files: str) -> Path:
    run = env.tmp / "run"
    run.mkdir()
    for f in files:
        (run / f).write_text("{}\n" if f.endswith(".jsonl") else "x: 1\n")
    return run


@pytest.fixture
def env(tiny_toycity, tiny_source, tmp_path):
    toy = tmp_path / "toy"
    shutil.copytree(tiny_toycity, toy)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return Env(toy, tiny_source, scratch)


def refused_cleanly(env, capsys, build, expect) -> None:
    """Run one case through the public command line and check that it was refused cleanly."""
    args = [str(a) for a in build(env)]
    t0 = time.time()
    try:
        code = main(args)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    elapsed = time.time() - t0
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert code == 2, text
    assert expect in text, text
    assert "Traceback" not in captured.err
    assert elapsed < 30
    assert not env.out.exists() or not any(env.out.rglob("*")), "something was written"
