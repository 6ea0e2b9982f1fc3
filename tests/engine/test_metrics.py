import math

import numpy as np
import pytest
import torch

from sfseg.engine.evaluation.metrics import ConfusionMatrix


def test_miou_matches_hand_computed_confusion_matrix():
    gt = torch.tensor([0, 0, 0, 1, 1, 2, 255, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 0, 2])
    cm = ConfusionMatrix(4)
    cm.update(gt, pred)
    # rows = gt, cols = pred; the 255 pixel is dropped; class 3 never occurs (zero union).
    expected = np.array([[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 2, 0], [0, 0, 0, 0]])
    assert np.array_equal(cm.mat.numpy(), expected)
    iou = cm.iou()
    assert (
        iou[0] == pytest.approx(2 / 3) and iou[1] == pytest.approx(1 / 3) and iou[2] == pytest.approx(2 / 3)
    )
    assert math.isnan(iou[3])
    s = cm.summary(["a", "b", "c", "d"], majority=[0])
    assert s["miou"] == pytest.approx(100 * (2 / 3 + 1 / 3 + 2 / 3) / 3)
    assert s["per_class"]["d"] is None
    assert s["majority_miou"] == pytest.approx(100 * 2 / 3)
    assert s["minority_miou"] == pytest.approx(100 * 0.5)
    assert s["pixel_acc"] == pytest.approx(100 * 5 / 7)


def test_accumulates_over_batches_like_one_pass():
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 5, (4, 8, 8), generator=g)
    pred = torch.randint(0, 5, (4, 8, 8), generator=g)
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(gt, pred)
    for i in range(4):
        b.update(gt[i], pred[i])
    assert torch.equal(a.mat, b.mat)


def test_class_in_ground_truth_but_never_predicted_counts_as_zero():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert cm.iou()[1] == 0.0


def test_unmapped_label_value_is_an_error():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\[7\]"):
        cm.update(torch.tensor([0, 7]), torch.tensor([0, 1]))


def test_uint8_fast_path_equals_the_general_path_and_checks_values():
    g = torch.Generator().manual_seed(3)
    gt = torch.randint(0, 6, (3, 40, 50), generator=g).to(torch.uint8)
    gt[0, :5] = 255
    pred = torch.randint(0, 6, (3, 40, 50), generator=g).to(torch.uint8)
    fast, general = ConfusionMatrix(6), ConfusionMatrix(6)
    fast.update(gt, pred)
    general.update(gt.long(), pred.long())
    assert torch.equal(fast.mat, general.mat) and int(fast.mat.sum()) == 3 * 40 * 50 - 5 * 50
    bad = gt.clone()
    bad[1, 0, 0] = 9
    with pytest.raises(ValueError, match=r"\[9\]"):
        ConfusionMatrix(6).update(bad, pred)
    with pytest.raises(ValueError, match="predictions must be class indices"):
        ConfusionMatrix(6).update(gt, torch.full_like(pred, 7))
