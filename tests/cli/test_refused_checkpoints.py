"""Refused cleanly: checkpoints: wrong kinds, damaged files, forced families (see :mod:`.adversarial`)."""

from pathlib import Path

import pytest
import torch

from .adversarial import spoiled
from .probe import refused

CASES = [
    (
        "nan-checkpoint-eval",
        lambda e: e.eval(checkpoint=spoiled(e, float("nan"))),
        "NaN or infinite",
    ),
    (
        "nan-checkpoint-adapt",
        lambda e: e.adapt(f"checkpoint={spoiled(e, float('inf'))}"),
        "edited.pt",
    ),
    (
        "zero-std-normalisation",
        lambda e: e.eval(checkpoint=e.checkpoint(lambda p: p["normalization"].update(std=[0.0, 1.0, 1.0]))),
        "std must be 3 positive",
    ),
    (
        "arch-kwargs-in-checkpoint",
        lambda e: e.eval(checkpoint=e.checkpoint(lambda p: p.update(arch_kwargs=[1, 2]))),
        "damaged metadata",
    ),
    ("checkpoint-text", lambda e: e.eval(checkpoint=e.file("t.pt", "hello\n")), "text file"),
    ("checkpoint-empty", lambda e: e.eval(checkpoint=e.file("t.pt", b"")), "empty"),
    (
        "checkpoint-pickled-object",
        lambda e: torch.save({"x": Path("/")}, e.scratch / "o.pt") or e.eval(checkpoint=e.scratch / "o.pt"),
        "other than tensors",
    ),
    (
        "nan-init-train-source",
        lambda e: e.source(f"init={spoiled(e, float('nan'))}"),
        "NaN or infinite",
    ),
]


@pytest.mark.parametrize("build, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_checkpoints_refused_cleanly(env, capsys, build, expect):
    refused(capsys, env, build(env), expect)
