"""Outputs never overwrite inputs: every command that takes both resolves them (real paths, after links)
and refuses an output that is, contains, or lies inside one of its inputs, before anything is written."""

from __future__ import annotations

import shutil

import pytest

from .probe import refused


def alias(env, target):
    """The same file under another name: through a linked folder."""
    folder = env.scratch / "linked"
    folder.symlink_to(target.parent)
    return folder / target.name


def stored_inside(run, src):
    """The input checkpoint kept inside the run directory that ``--overwrite`` would clear."""
    inside = run / "my_source.pt"
    shutil.copyfile(src, inside)
    return inside


def adapt_from(e, checkpoint, *extra, out):
    return [
        f"checkpoint={checkpoint}" if str(a).startswith("checkpoint=") else a
        for a in e.adapt(*extra, out=out)
    ]


CASES = [
    ("import-same-file", lambda e, f: ["import-checkpoint", e.src, e.src], "is input"),
    (
        "import-through-a-linked-folder",
        lambda e, f: ["import-checkpoint", e.src, alias(e, e.src)],
        "is input",
    ),
    (
        "import-through-dotdot",
        lambda e, f: ["import-checkpoint", e.src, e.scratch / ".." / e.src.name],
        "is input",
    ),
    ("eval-json-onto-checkpoint", lambda e, f: e.eval("--json", e.src), "is --checkpoint"),
    ("eval-json-into-data", lambda e, f: e.eval("--json", e.toy / "m.json"), "lies inside --data"),
    (
        "eval-json-into-predictions",
        lambda e, f: ["eval", "--predictions", e.scratch, "--data", e.toy, "--json", e.scratch / "m.json"],
        "lies inside --predictions",
    ),
    (
        "predict-into-data",
        lambda e, f: ["predict", "--checkpoint", e.src, "--data", e.toy, "--out", e.toy / "p"],
        "lies inside --data",
    ),
    (
        "predict-onto-data",
        lambda e, f: ["predict", "--checkpoint", e.src, "--data", e.toy, "--out", e.toy],
        "is --data",
    ),
    ("report-onto-metrics", lambda e, f: ["report", f, "--out", f / "metrics.jsonl"], "is run"),
    ("report-onto-a-checkpoint", lambda e, f: ["report", f, "--out", f / "final.pt"], "is run"),
    ("select-json-onto-summary", lambda e, f: ["select", f, "--json", f / "summary.json"], "is run"),
    (
        "overwrite-a-run-holding-the-checkpoint",
        lambda e, f: adapt_from(e, stored_inside(f, e.src), "--overwrite", out=f),
        "contains checkpoint",
    ),
    ("adapt-out-is-data", lambda e, f: e.adapt(out=e.toy), "is data.root"),
    ("adapt-out-inside-data", lambda e, f: e.adapt(out=e.toy / "runs" / "ld"), "lies inside data.root"),
    (
        "train-source-out-is-init",
        lambda e, f: [
            "train-source",
            "--config",
            "configs/toycity/source.yaml",
            f"data.root={e.toy}",
            f"init={e.src}",
            f"out={e.src}",
            "epochs=1",
        ],  # fmt: skip
        "is init",
    ),
    (
        "train-source-out-inside-data",
        lambda e, f: [
            "train-source",
            "--config",
            "configs/toycity/source.yaml",
            f"data.root={e.toy}",
            f"out={e.toy / 'src.pt'}",
            "epochs=1",
        ],  # fmt: skip
        "lies inside data.root",
    ),
    (
        "bench-out-inside-data",
        lambda e, f: [
            "bench",
            "toycity",
            "--data",
            e.toy,
            "--out",
            e.toy / "b",
            "--methods",
            "source_only",
            "--seeds",
            "0",
        ],  # fmt: skip
        "lies inside --data",
    ),
    (
        "demo-out-is-data",
        lambda e, f: ["demo", "--data", e.toy, "--out", e.toy, "--methods", "source_only"],
        "is --data",
    ),
]


@pytest.mark.parametrize("build, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_output_that_is_or_holds_an_input_is_refused(env, finished, capsys, build, expect):
    args = build(env, finished)  # built first: a case may store an input where the output goes
    refused(capsys, env, args, expect)
