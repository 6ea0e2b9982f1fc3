"""Our evaluation against the official cityscapesscripts pixel-level evaluation, on the same predictions."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sfseg.cli.main import main
from sfseg.data.classes import CITYSCAPES19, SYNTHIA16
from sfseg.data.fake_trees import write_cityscapes
from sfseg.data.normalization import IMAGENET
from sfseg.data.registry import build_dataset
from sfseg.engine.evaluation.metrics import ConfusionMatrix
from sfseg.engine.evaluation.predict import export_prediction, output_name
from sfseg.models import Checkpoint, create_model


def _official(preds, gts):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
    from cityscapesscripts.helpers.labels import labels

    args = ev.args
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    args.evalLabels = [lab.id for lab in labels if lab.id >= 0]
    res = ev.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], args)
    return res["classScores"]


def _gt_paths(root, ds):
    return [root / "gtFine" / "val" / n.replace("_leftImg8bit.png", "_gtFine_labelIds.png") for n in ds.names]


def test_miou_matches_cityscapesscripts_on_random_predictions(tmp_path):
    write_cityscapes(tmp_path, splits=("val",), per_split=4, size=(96, 48))
    ds = build_dataset("cityscapes", tmp_path, "val")
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(19)
    preds = []
    for item, name in zip(ds, ds.names):
        pred = rng.integers(0, 19, item["label"].shape)
        cm.update(item["label"], torch.from_numpy(pred))
        preds.append(
            export_prediction(
                pred, tmp_path / "pred" / output_name(name, "cityscapes"), CITYSCAPES19, "cityscapes"
            )
        )
    official = _official(preds, _gt_paths(tmp_path, ds))
    ours = cm.iou()
    for i, name in enumerate(CITYSCAPES19.names):
        assert ours[i] == pytest.approx(official[name], abs=1e-6), name
    official_mean = np.mean([official[n] for n in CITYSCAPES19.names if not math.isnan(official[n])])
    assert float(np.nanmean(ours)) == pytest.approx(official_mean, abs=1e-6)


def test_16_and_13_class_scores_come_from_one_matrix():
    cm = ConfusionMatrix(16)
    rng = np.random.default_rng(1)
    gt, pred = rng.integers(0, 16, 5000), rng.integers(0, 16, 5000)
    cm.update(torch.from_numpy(gt), torch.from_numpy(pred))
    s = cm.summary(SYNTHIA16.names, SYNTHIA16.majority, SYNTHIA16.subsets)
    iou = cm.iou() * 100
    assert s["miou"] == pytest.approx(iou.mean())
    assert s["miou13"] == pytest.approx(np.delete(iou, [3, 4, 5]).mean())


def test_cli_predict_cityscapes_format_agrees_with_eval(tmp_path, capsys):
    write_cityscapes(tmp_path / "cs", splits=("val",), per_split=3, size=(64, 32))
    torch.manual_seed(0)
    model = create_model("deeplab_small", 19, width=8)
    for conv in model.classifier.conv2d_list:  # a head that predicts many classes, not one
        torch.nn.init.normal_(conv.weight, 0, 1.0)
    ckpt = Checkpoint.of(model, CITYSCAPES19.names, IMAGENET).save(tmp_path / "m.pt")
    common = ["--checkpoint", str(ckpt), "--dataset", "cityscapes", "--data", str(tmp_path / "cs")]
    assert main(["predict", *common, "--out", str(tmp_path / "pred"), "--format", "cityscapes"]) == 0
    assert main(["eval", *common, "--json", str(tmp_path / "m.json")]) == 0
    preds = sorted((tmp_path / "pred").rglob("*_pred_labelIds.png"))
    ds = build_dataset("cityscapes", tmp_path / "cs", "val")
    assert [p.relative_to(tmp_path / "pred").as_posix() for p in preds] == [
        output_name(n, "cityscapes") for n in ds.names
    ]
    for p in preds:
        arr = np.asarray(Image.open(p))
        assert arr.shape == (32, 64) and set(np.unique(arr)) <= set(CITYSCAPES19.label_ids())
    ours = json.loads((tmp_path / "m.json").read_text())
    official = _official(preds, _gt_paths(tmp_path / "cs", ds))
    # Scoring the exported files gives the same numbers as scoring the model.
    files = tmp_path / "files.json"
    assert main(["eval", "--predictions", str(tmp_path / "pred"), *common[2:], "--json", str(files)]) == 0
    assert json.loads(files.read_text())["per_class"] == pytest.approx(ours["per_class"], abs=1e-9)
    for name in CITYSCAPES19.names:
        if ours["per_class"][name] is None:
            assert math.isnan(official[name])
        else:
            assert ours["per_class"][name] == pytest.approx(100 * official[name], abs=1e-4)
