"""The README's commands and its Python example, run as written (blocks marked ``<!-- test: name -->``),
in a scratch directory holding what they name: a folder of images, a checkpoint, a fake Cityscapes tree."""

import re
import shlex
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sfseg.api import DEMO_CHECKPOINT
from sfseg.cli.main import main

from ..conftest import REPO

pytestmark = pytest.mark.slow

README = (REPO / "README.md").read_text()


def block(name: str) -> str:
    """The code block that follows ``<!-- test: name -->``."""
    m = re.search(rf"<!-- test: {name} -->\n```\w+\n(.*?)```", README, re.S)
    assert m, f"README has no block marked {name}"
    return m.group(1)


def commands(text: str) -> list[list[str]]:
    """The shell commands of a block (continuation lines joined, comments dropped)."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_toycity):
    """An empty directory with ``my_images/`` (ToyCity target images, nested, no labels) and ``model.pt``."""
    images = tmp_path / "my_images"
    for i, p in enumerate(sorted((tiny_toycity / "target" / "images" / "train").glob("*.png"))):
        dest = images / ("" if i < 4 else "later") / f"frame {i}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    shutil.copy(DEMO_CHECKPOINT, tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(argv: list[str]) -> None:
    assert argv[0] == "sfseg", argv
    assert main(argv[1:]) == 0, argv


def test_adapt_to_your_own_images_as_written(workdir):
    for argv in commands(block("own-images")):
        run([*argv, *(["rounds=1", "epochs_per_round=1"] if argv[1] == "adapt" else [])])  # shorter
    assert (workdir / "runs/mine/selected.pt").is_file()
    assert len(list((workdir / "predictions").rglob("*_overlay.jpg"))) == 8


def test_the_python_example_runs_as_written_and_matches_sfseg_predict(workdir):
    namespace: dict = {}
    exec(compile(block("api-example"), "README.md", "exec"), namespace)
    labels = namespace["labels"]
    assert labels.shape == (32, 64) and labels.dtype == np.uint8
    assert (workdir / "mine.onnx").is_file() and (workdir / "mine.onnx.json").is_file()
    # The same pixels as `sfseg predict` writes for that image.
    ckpt = str(DEMO_CHECKPOINT)
    run(
        ["sfseg", "predict", "--checkpoint", ckpt, "--dataset", "folder", "--data", "my_images", "--out", "p"]
    )
    np.testing.assert_array_equal(np.asarray(Image.open(workdir / "p" / "frame 0_pred.png")), labels)
    # ... and for an array and a tensor of it.
    model, image = namespace["model"], namespace["image"]
    np.testing.assert_array_equal(model.predict(np.asarray(image.convert("RGB"))), labels)
    tensor = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    assert torch.equal(model.predict(tensor), torch.from_numpy(labels))
    assert torch.equal(model.predict(torch.stack([tensor, tensor]))[1], torch.from_numpy(labels))


def test_reproducing_the_paper_commands_on_a_fake_cityscapes_tree(workdir):
    """The paper's commands as written, on a fake Cityscapes tree and a random community-format R-101,
    with the input size scaled to the fake images (the only change)."""
    from sfseg.data.fake_trees import write_cityscapes
    from sfseg.models.deeplab_v2 import DeepLabV2

    write_cityscapes(workdir / "data/cityscapes", per_split=3, size=(128, 64))
    torch.manual_seed(0)
    sd = DeepLabV2(19).state_dict()
    # The authors' source file's layout: a DataParallel prefix, an unused layer6, no num_batches_tracked.
    foreign = {f"module.{k}": v for k, v in sd.items() if "num_batches" not in k}
    foreign.update({f"module.layer6.{k[7:]}": v.clone() for k, v in sd.items() if k.startswith("layer5.")})
    torch.save({"state_dict": foreign}, workdir / "GTA5_source.pth")
    small = ["input_size=[96, 48]", "augment.short_side=48", "augment.crop=40", "rounds=1", "num_workers=0"]
    for argv in commands(block("paper")):
        if argv[1] == "adapt":
            argv = [*argv, *small]
        if argv[1] == "eval":
            assert argv[-3:] == ["--input-size", "1024", "512"]
            argv = [*argv[:-2], "96", "48"]
        run(argv)
    assert (workdir / "runs/gta5_to_cityscapes/ldbe/final.pt").is_file()
