"""Refused cleanly: run directories, prediction files, select and report (see :mod:`.adversarial`)."""

import numpy as np
import pytest
from PIL import Image

from .adversarial import prediction_folder, run_dir
from .probe import refused

CASES = [
    ("resume-missing-dir", lambda e: ["adapt", "--resume", str(e.scratch / "nothing")], "no run to resume"),
    ("resume-not-a-run", lambda e: ["adapt", "--resume", str(run_dir(e))], "no run to resume"),
    (
        "new-run-into-other-files",
        lambda e: e.adapt(f"out={run_dir(e, 'notes.txt')}"),
        "already holds other files",
    ),
    ("out-is-a-file", lambda e: e.adapt(f"out={e.file('plain', 'x')}"), "not a directory"),
    (
        "overwrite-unmarked",
        lambda e: e.adapt(f"out={run_dir(e, 'config.yaml', 'metrics.jsonl')}", "--overwrite"),
        "run marker",
    ),
    (
        "resume-and-overwrite",
        lambda e: ["adapt", "--resume", str(e.scratch), "--overwrite"],
        "exclude each other",
    ),
    # ---- prediction files
    (
        "prediction-rgb",
        lambda e: [
            "eval",
            "--predictions",
            str(prediction_folder(e, lambda p: Image.new("RGB", Image.open(p).size).save(p))),
            "--data",
            str(e.toy),
            "--format",
            "trainid",
        ],
        "mode 'RGB'",
    ),
    (
        "prediction-empty",
        lambda e: [
            "eval",
            "--predictions",
            str(prediction_folder(e, lambda p: p.write_bytes(b""))),
            "--data",
            str(e.toy),
            "--format",
            "trainid",
        ],
        "is empty",
    ),
    (
        "prediction-16-bit",
        lambda e: [
            "eval",
            "--predictions",
            str(prediction_folder(e, lambda p: Image.fromarray(np.zeros((32, 64), np.uint16)).save(p))),
            "--data",
            str(e.toy),
            "--format",
            "trainid",
        ],
        "not 8-bit ids",
    ),
    (
        "prediction-garbage",
        lambda e: [
            "eval",
            "--predictions",
            str(prediction_folder(e, lambda p: p.write_bytes(b"\x89PNG garbage"))),
            "--data",
            str(e.toy),
            "--format",
            "trainid",
        ],
        "cannot be read as a prediction",
    ),
    (
        "predictions-missing",
        lambda e: ["eval", "--predictions", str(e.scratch), "--data", str(e.toy)],
        "prediction file(s) missing",
    ),
    # ---- select and report
    ("select-not-a-run", lambda e: ["select", str(e.scratch)], "not a run directory"),
    (
        "select-unknown-validator",
        lambda e: ["select", str(e.scratch), "--validator", "vibes"],
        "unknown validator",
    ),
    (
        "report-not-a-run",
        lambda e: ["report", str(e.scratch), "--out", str(e.out / "r.html")],
        "not an sfseg run directory",
    ),
    (
        "report-damaged-metrics",
        lambda e: ["report", str(run_dir(e, "metrics.jsonl").parent / "run"), "--out", str(e.out / "r.html")],
        "not an sfseg metrics record",
    ),
]


@pytest.mark.parametrize("build, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_runs_refused_cleanly(env, capsys, build, expect):
    refused(capsys, env, build(env), expect)
