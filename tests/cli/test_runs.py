"""Damaged run files, diverging runs, the environment and the lock: each is one error naming the file,
key or variable and what to do, never a traceback, and a refused command leaves nothing behind."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ..conftest import sfseg_cli
from .probe import refused, run


def cut(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def cut_last_line(path):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])


def small_label(path):
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(path)


def user_folder(env):
    folder = env.scratch / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    return folder


def overflowing(env):
    """Finite weights whose outputs overflow float32: a head of 3e38."""
    payload = torch.load(env.src, weights_only=True)
    for k, v in payload["state_dict"].items():
        if k.startswith("classifier") and v.is_floating_point():
            v.fill_(3e38)
    path = env.scratch / "overflow.pt"
    torch.save(payload, path)
    return path


# (id, build args from (env, killed run, finished run), expected text)
CASES = [
    # ---- damaged run files
    (
        "state-without-its-config",
        lambda e, k, f: (k / "config.yaml").unlink() or ["adapt", "--resume", k],
        "config.yaml is missing, but the run's state is there",
    ),
    (
        "truncated-pseudo-label",
        lambda e, k, f: cut(k / "pseudo_labels/round_0/00003.png") or ["adapt", "--resume", k],
        "00003.png: a pseudo-label file is damaged",
    ),
    (
        "pseudo-label-of-another-size",  # a readable label map, but not this image's: still refused
        lambda e, k, f: small_label(k / "pseudo_labels/round_0/00001.png") or ["adapt", "--resume", k],
        "00001.png: a pseudo-label file is damaged (wrong size)",
    ),
    (
        "metrics-cut-below-the-saved-state",
        lambda e, k, f: cut(k / "metrics.jsonl", 0.3) or ["adapt", "--resume", k],
        "metrics.jsonl is shorter",
    ),
    (
        "metrics-last-line-cut-report",
        lambda e, k, f: cut_last_line(f / "metrics.jsonl") or ["report", f, "--out", e.scratch / "r.html"],
        "not an sfseg metrics record (the file was cut or edited)",
    ),
    (
        "metrics-last-line-cut-select",
        lambda e, k, f: cut_last_line(f / "metrics.jsonl") or ["select", f],
        "not an sfseg metrics record",
    ),
    (
        "summary-cut-report",
        lambda e, k, f: cut(f / "summary.json") or ["report", f, "--out", e.scratch / "r.html"],
        "summary.json is damaged",
    ),
    (
        "select-round-checkpoints-deleted",
        lambda e, k, f: (f / "round_0.pt").unlink() or ["select", f],
        "their checkpoints are missing (round_0.pt",
    ),
    (
        "state-not-a-state",
        lambda e, k, f: (
            torch.save({"format": "sfseg-run-state-v1", "phase": "run"}, k / "state.pt")
            or ["adapt", "--resume", k]
        ),
        "without its recipe",
    ),
    # ---- non-finite outputs: never a label map, never a score
    ("eval-overflowing-model", lambda e, k, f: e.eval(checkpoint=overflowing(e)), "NaN or infinite"),
    # ---- the lock comes after the checks
    ("new-run-into-a-user-folder", lambda e, k, f: e.adapt(out=user_folder(e)), "already holds other files"),
    ("overwrite-a-user-folder", lambda e, k, f: e.adapt("--overwrite", out=user_folder(e)), "run marker"),
    ("resume-a-user-folder", lambda e, k, f: ["adapt", "--resume", user_folder(e)], "holds no run to resume"),
]


@pytest.mark.parametrize("build, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_damaged_or_refused_run_is_one_clear_error(env, killed, finished, capsys, build, expect):
    refused(capsys, env, build(env, killed, finished), expect)


ENVIRONMENTS = [
    ({"LOCAL_WORLD_SIZE": "0"}, "LOCAL_WORLD_SIZE is 0"),
    ({"WORLD_SIZE": "2"}, "RANK is unset; it must be set with WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "abc"}, "RANK is 'abc'; it must be an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK is 2; it must be in 0..1"),
    ({"WORLD_SIZE": "-1"}, "WORLD_SIZE is -1"),
    ({"RANK": "3"}, "RANK is 3; it must be 0 when WORLD_SIZE is 1"),
    ({"OMP_NUM_THREADS": "zero"}, "OMP_NUM_THREADS is 'zero'"),
]


@pytest.mark.parametrize("variables, expect", ENVIRONMENTS, ids=[" ".join(v) for v, _ in ENVIRONMENTS])
def test_a_stray_launcher_variable_is_one_line(env, capsys, monkeypatch, variables, expect):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    threads = torch.get_num_threads()
    try:
        refused(capsys, env, env.eval(), expect)
    finally:
        torch.set_num_threads(threads)


def test_predict_never_writes_a_label_map_from_non_finite_logits(env, capsys):
    out = env.scratch / "p"
    args = ["predict", "--checkpoint", overflowing(env), "--data", env.toy, "--out", out]
    refused(capsys, env, args, "NaN or infinite values (image ", allow=("scratch/p",))
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_an_explicit_thread_count_is_respected(env):
    res = sfseg_cli(*env.adapt(), env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    start = json.loads((env.out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["phase"] == "start" and start["threads"] == 1


def test_a_diverging_run_ends_with_the_divergence_message_and_its_last_good_state(env, capsys):
    """With lr 1e6 the weights explode within the round: the run stops before evaluating them (where NaN
    logits used to give a prediction outside the classes and a traceback), keeping the last good state."""
    from sfseg.engine.training.resume import read_state
    from sfseg.models.checkpoint import first_non_finite

    line = refused(capsys, env, env.adapt("optim.lr=1e6", "max_weight_growth=0"), "training diverged",
                   allow=("scratch/out",))  # fmt: skip
    assert "Nothing was saved after the last good state" in line
    state = read_state(env.out)
    assert state["phase"] == "run" and first_non_finite(state["model"]) is None
    assert not (env.out / "round_0.pt").exists() and not (env.out / "final.pt").exists()


def test_argmax_of_nan_logits_is_always_a_class():
    from sfseg.models.ops import argmax_classes

    x = torch.randn(2, 5, 4, 4)
    x[0, 2, 1, 1] = math.nan
    x[1, :, 0, 0] = math.nan
    out = argmax_classes(x)
    assert torch.equal(out, x.argmax(1)) and int(out.max()) < 5


def test_resume_of_a_killed_run_still_works(env, killed):
    """The checks above refuse damage, not runs: the intact killed run resumes and finishes."""
    assert run(["adapt", "--resume", killed]) == 0
    assert (killed / "final.pt").is_file()
    assert os.path.getsize(killed / "summary.json") > 0
