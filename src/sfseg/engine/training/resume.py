"""Exact resume: the saved state of a run, the recipe check that refuses to resume with another recipe,
and the random generators' state."""

from __future__ import annotations

import ast
import os
import random
from pathlib import Path

import numpy as np
import torch

from sfseg.config import from_dict, to_dict
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.training.recipe import AdaptConfig
from sfseg.errors import CheckpointError, ConfigError, ResumeError
from sfseg.models.checkpoint import read_tensors

STATE_FORMAT = "sfseg-run-state-v1"
_STATE_KEYS = ("config", "round", "epoch", "batch", "step", "model", "optimizer", "rng")
# Keys of the recipe a resumed run may change: where and how fast it runs, not what it computes. ``out``
# is where the run lives: a run directory moved or copied elsewhere resumes (or is reused) in its new place.
RESUMABLE_CHANGES = (
    "out",
    "runtime.device",
    "runtime.num_workers",
    "runtime.save_every",
    "runtime.tensorboard",
)
_LEAVES = ("loss_weights", "arch_kwargs", "options")  # mappings compared as one value


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in _LEAVES:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _normalised(recipe: dict) -> dict:
    try:
        return to_dict(from_dict(AdaptConfig, recipe))
    except ConfigError:
        return recipe


def _same_file(a: object, b: object) -> bool:
    """Whether two recipe values are two spellings of one existing file or folder (a relative and an
    absolute path, or a path through a link): the same input, so not a difference."""
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def describe_differences(saved: dict, given: dict) -> str:
    """The keys (at most five) in which two recipes differ, each with its two values; "" when they agree.

    Keys in ``RESUMABLE_CHANGES`` do not count, nor two spellings of the same existing path. Both recipes
    are read through the schema first, so a key that a recipe written by an older sfseg lacks counts as its
    default."""
    fs, fg = _flat(_normalised(saved)), _flat(_normalised(given))
    diff = sorted(
        k
        for k in set(fs) | set(fg)
        if fs.get(k) != fg.get(k) and k not in RESUMABLE_CHANGES and not _same_file(fs.get(k), fg.get(k))
    )
    shown = ", ".join(f"{k} ({fs.get(k)!r} -> {fg.get(k)!r})" for k in diff[:5])
    return shown + (" ..." if len(diff) > 5 else "")


def check_same_recipe(saved: dict, given: dict, out: Path) -> None:
    """Refuse to resume ``out`` with a recipe that computes something other than the one it started with."""
    shown = describe_differences(saved, given)
    if shown:
        raise ResumeError(
            f"{out} holds a run of another recipe; it differs in {shown}. "
            "Resume with the run's own recipe (omit --config) or start a new run elsewhere"
        )


def read_state(out: Path) -> dict:
    """The saved state of the run in ``out``; one clear error when it is missing or unreadable."""
    run = RunDir(out)
    path = run.check(run.state)
    if not os.path.lexists(path):
        raise ResumeError(
            f"{path} not found: {out} has no resumable state (was it written by sfseg adapt, and did it "
            "get past the source-model evaluation?)"
        )
    try:
        state = read_tensors(path, root=run.path)
    except CheckpointError as e:
        raise ResumeError(
            f"{str(e).removeprefix('checkpoint ')}; the state cannot be resumed. Start the run again with "
            "--overwrite"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not an sfseg run state; it cannot be resumed")
    if not isinstance(state.get("config"), dict):
        raise ResumeError(f"{path} is an sfseg run state without its recipe: damaged. Run it again")
    return state


def resumable_state(out: Path, recipe: AdaptConfig) -> dict:
    """The state of the run in ``out``, checked: unfinished and started with ``recipe``."""
    state = read_state(out)
    if state.get("phase") == "done":
        raise ResumeError(f"the run in {out} has finished; nothing to resume (final.pt is its result)")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise ResumeError(
            f"{RunDir(out).state} is an sfseg run state without {missing}: damaged or from another version. "
            "Start the run again with --overwrite"
        )
    check_same_recipe(state["config"], to_dict(recipe), Path(out))
    return state


def rng_state() -> dict:
    """The global generators' state (torch, NumPy, Python), as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": repr(random.getstate()),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))
