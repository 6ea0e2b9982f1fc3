import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sfseg.data.toycity import ToyCitySpec, generate

torch.set_num_threads(2)

TINY = replace(ToyCitySpec(), height=32, width=64, source_train=8, source_val=4, target_train=8, target_val=4)


@pytest.fixture(scope="session")
def tiny_toycity(tmp_path_factory):
    """A tiny ToyCity tree (32x64 pixels, a few images per split), generated once per session."""
    root = tmp_path_factory.mktemp("toycity")
    generate(root, TINY, progress=False)
    return root


SMALL_MODEL = "arch_kwargs={width: 8, output_stride: 4}"
REPO = Path(__file__).resolve().parents[1]


def source_args(root, out, *extra: str) -> list[str]:
    """``sfseg train-source`` with the ToyCity source recipe on ``root``, writing ``out``."""
    return [
        "train-source",
        "--config",
        "configs/toycity/source.yaml",
        f"data.root={root}",
        f"out={out}",
        *extra,
    ]


def adapt_args(root, src, out, recipe: str = "ld", *extra: str) -> list[str]:
    """``sfseg adapt`` with the ToyCity recipe ``recipe`` from ``src`` on ``root``, into ``out``."""
    return [
        "adapt",
        "--config",
        f"configs/toycity/{recipe}.yaml",
        f"data.root={root}",
        f"checkpoint={src}",
        f"out={out}",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_source(tiny_toycity, tmp_path_factory):
    """A source checkpoint of the small model trained one epoch on the tiny tree (once per session)."""
    from sfseg.config import load_config
    from sfseg.engine.training.recipe import SourceConfig
    from sfseg.engine.training.source import train_source

    out = tmp_path_factory.mktemp("source") / "source.pt"
    cfg = load_config(
        SourceConfig,
        REPO / "configs/toycity/source.yaml",
        [f"data.root={tiny_toycity}", f"out={out}", "epochs=1", SMALL_MODEL],
    )
    train_source(cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_mit(tiny_toycity, tmp_path_factory):
    """A source checkpoint of the tiny MiT (the transformer recipes' network) trained one epoch on the tiny
    tree (once per session)."""
    from sfseg.api import train_source

    out = tmp_path_factory.mktemp("mit") / "mit.pt"
    train_source(
        REPO / "configs/toycity/mit/source.yaml",
        [f"data.root={tiny_toycity}", f"out={out}", "epochs=1", "warmup_steps=1"],
        progress=False,
    )
    return out


def sfseg_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the ``sfseg`` command in a child process (from the repository root)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sfseg.cli.main", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
