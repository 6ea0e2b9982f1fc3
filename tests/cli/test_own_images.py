"""Adapting to a plain folder of the user's own unlabelled images (no splits, no labels, any nesting), and
predicting on it: label PNGs and overlays a person can look at."""

import json

import numpy as np
import pytest
from PIL import Image

from sfseg.api import DEMO_CHECKPOINT
from sfseg.cli.main import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_images(tmp_path_factory):
    """20 ToyCity target images in a plain folder, nested two levels, with no labels anywhere."""
    from dataclasses import replace

    from sfseg.data.toycity import ToyCitySpec, generate

    world = tmp_path_factory.mktemp("world")
    spec = replace(
        ToyCitySpec(), variant="small_objects", source_train=4, source_val=4, target_train=20, target_val=4
    )
    generate(world, spec, progress=False)
    root = tmp_path_factory.mktemp("mine") / "street photos"
    for i, p in enumerate(sorted((world / "target" / "images" / "train").glob("*.png"))):
        dest = root / ("morning" if i < 10 else "evening/late") / f"frame {i}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    return root


def test_adapt_on_a_plain_folder_selects_its_model_without_labels(own_images, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["adapt", "--config", "toycity/ld", f"checkpoint={DEMO_CHECKPOINT}", "data.dataset=folder",
            f"data.root={own_images}", f"out={out}", "rounds=2", "epochs_per_round=1"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "bnm (label-free) chose" in printed and "no target labels" in printed
    assert (out / "final.pt").is_file() and (out / "selected.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"] is None and summary["validator"] == "bnm"
    # The validator's score of the starting model and of every round.
    assert [s["round"] for s in summary["validator_scores"]] == [-1, 0, 1]
    assert summary["selected"]["round"] in (-1, 0, 1)
    # The classes are the checkpoint's own (no data.protocol given).
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["classes"][:3] == ["road", "sidewalk", "building"] and start["target_labels"] is False
    # The report says how the rounds were scored.
    assert main(["report", str(out), "--out", str(tmp_path / "report.html")]) == 0
    assert "bnm" in (tmp_path / "report.html").read_text()


def test_predict_on_the_plain_folder_writes_labels_and_overlays(own_images, tmp_path):
    out = tmp_path / "preds"
    args = ["predict", "--checkpoint", str(DEMO_CHECKPOINT), "--dataset", "folder", "--data", str(own_images),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    images = sorted(p.relative_to(own_images) for p in own_images.rglob("*.png"))
    assert len(images) == 20
    for rel in images:
        label = out / rel.parent / f"{rel.stem}_pred.png"
        pic = out / rel.parent / f"{rel.stem}_overlay.jpg"
        with Image.open(label) as im, Image.open(own_images / rel) as src:
            assert im.mode == "P" and im.size == src.size  # class indices, viewable in their colours
            assert np.asarray(im).max() < 12
        with Image.open(pic) as im:
            assert im.width >= 384 and im.height > src.height  # enlarged, with a legend below
    assert len(list(out.rglob("*.*"))) == 40


def test_a_folder_without_images_or_labels_says_what_to_do(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    args = ["adapt", "--config", "toycity/ld", f"checkpoint={DEMO_CHECKPOINT}", "data.dataset=folder",
            f"data.root={tmp_path / 'empty'}", f"out={tmp_path / 'run'}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no .png/.jpg/.jpeg images" in err and "<root>/**/<name>.{png,jpg,jpeg}" in err
    assert not (tmp_path / "run").exists()
    # Scoring a plain folder needs labels: the error shows the layout that has them.
    Image.new("RGB", (64, 32)).save(tmp_path / "empty" / "sub" / "a.png")
    args = [
        "eval",
        "--checkpoint",
        str(DEMO_CHECKPOINT),
        "--dataset",
        "folder",
        "--data",
        str(tmp_path / "empty"),
    ]
    assert main(args) == 2
    assert "plain folder of images, without labels" in capsys.readouterr().err
