"""Refused cleanly: the command line's own flags (see :mod:`.adversarial`)."""

import pytest

from .probe import refused

CASES = [
    ("flag-batch-size-0", lambda e: e.eval("--batch-size", "0"), "--batch-size: must be in"),
    ("flag-workers-negative", lambda e: e.eval("--workers", "-1"), "--workers: must be in"),
    ("flag-input-size-0", lambda e: e.eval("--input-size", "0", "0"), "--input-size: must be in"),
    (
        "flag-max-images-negative",
        lambda e: ["select", str(e.scratch), "--max-images", "-5"],
        "--max-images: must be in",
    ),
    ("flag-jobs-0", lambda e: ["bench", "toycity", "--jobs", "0"], "--jobs: must be in"),
    (
        "flag-seed-negative",
        lambda e: ["toycity", "generate", "--seed", "-1", "--out", str(e.out)],
        "--seed: must be in",
    ),
    ("flag-seeds-text", lambda e: ["bench", "toycity", "--seeds", "one"], "is not an integer"),
]


@pytest.mark.parametrize("build, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_flags_refused_cleanly(env, capsys, build, expect):
    refused(capsys, env, build(env), expect)


def test_the_probe_is_large_enough():
    from . import test_refused_checkpoints, test_refused_data, test_refused_recipes, test_refused_runs

    groups = (test_refused_recipes, test_refused_data, test_refused_checkpoints, test_refused_runs)
    assert len(CASES) + sum(len(g.CASES) for g in groups) >= 60
