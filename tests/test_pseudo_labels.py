import math

import pytest
import torch

from sfseg import IGNORE_INDEX
from sfseg.adapt.pseudo_labels import (
    ConfidenceHistogram,
    argmax_labels,
    class_balanced_labels,
    exact_thresholds,
    global_threshold_labels,
    local_top_alpha,
)


def _random_predictions(seed: int, n: int = 20000, c: int = 7):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randn(n, c, generator=g).mul(2.5).softmax(1)
    conf, pred = probs.max(1)
    return conf, pred


@pytest.mark.parametrize("alpha", [0.001, 0.1, 0.15, 0.5, 1.0])
@pytest.mark.parametrize("bins", [64, 4096])
def test_histogram_thresholds_match_exact_sort_within_one_bin(alpha, bins):
    conf, pred = _random_predictions(0)
    hist = ConfidenceHistogram(7, bins)
    for chunk in range(0, conf.numel(), 3000):  # streamed in chunks, as over a dataset
        hist.update(conf[chunk:chunk + 3000], pred[chunk:chunk + 3000])
    got = hist.thresholds(alpha)
    exact = exact_thresholds(conf, pred, 7, alpha)
    assert torch.all(got <= exact + 1e-7)
    assert torch.all(exact - got < 1.0 / bins + 1e-7)
    for c in range(7):
        mine = (pred == c) & (conf >= got[c])
        ref = (pred == c) & (conf >= exact[c])
        assert torch.all(mine | ~ref), "histogram selection must contain the exact selection"
        extra = conf[mine & ~ref]
        assert torch.all(extra >= got[c]) and torch.all(extra < exact[c])


def test_exact_threshold_keeps_ceil_alpha_n():
    conf, pred = _random_predictions(1, n=5000)
    exact = exact_thresholds(conf, pred, 7, 0.1)
    for c in range(7):
        n_c = int((pred == c).sum())
        kept = int(((pred == c) & (conf >= exact[c])).sum())
        assert kept == math.ceil(0.1 * n_c)  # continuous random data: no ties


def test_never_predicted_class_selects_nothing_and_tiny_class_keeps_one_pixel():
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95])
    pred = torch.tensor([0, 0, 0, 0, 2])
    hist = ConfidenceHistogram(3, 1000)
    hist.update(conf, pred)
    thr = hist.thresholds(0.1)  # class 2: alpha * N = 0.1 < 1 -> keep its single best pixel
    assert math.isinf(thr[1])
    assert thr[2] <= 0.95 < thr[2] + 1e-3
    assert thr[0] <= 0.9 < thr[0] + 1e-3  # ceil(0.4) = 1 pixel of class 0


def test_saturated_confidences_are_selectable():
    conf = torch.ones(10)
    pred = torch.zeros(10, dtype=torch.long)
    hist = ConfidenceHistogram(2, 100)
    hist.update(conf, pred)
    thr = hist.thresholds(0.2)
    probs = torch.zeros(1, 2, 2, 5)
    probs[:, 0] = 1.0
    labels = class_balanced_labels(probs, thr, alpha=0.2, local=False)
    assert torch.all(labels == 0)  # >=, not >: a class saturated at 1.0 keeps its pixels


def test_local_top_alpha_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    conf = torch.rand(3, 10, 12, generator=g)
    sel = local_top_alpha(conf, 0.15)
    for b in range(3):
        k = math.ceil(0.15 * 120)
        kth = conf[b].flatten().sort(descending=True).values[k - 1]
        assert torch.equal(sel[b], conf[b] >= kth)
        assert int(sel[b].sum()) == k


def test_class_balanced_fusion_and_channel_tests():
    # Pixel 0: argmax class 0 above its threshold. Pixel 1: argmax class 0 below; class 1's channel is above
    # class 1's threshold (selected only by the "any" test, labelled with the argmax 0). Pixel 2: none.
    probs = torch.tensor([[0.9, 0.1], [0.55, 0.45], [0.6, 0.4]]).T.reshape(1, 2, 1, 3)
    thr = torch.tensor([0.8, 0.42])
    argmax_sel = class_balanced_labels(probs, thr, alpha=0.01, local=False)
    assert argmax_sel.flatten().tolist() == [0, IGNORE_INDEX, IGNORE_INDEX]
    any_sel = class_balanced_labels(probs, thr, alpha=0.01, local=False, channel_test="any")
    assert any_sel.flatten().tolist() == [0, 0, IGNORE_INDEX]
    fused = class_balanced_labels(probs, torch.tensor([0.95, 0.95]), alpha=0.3, local=True)
    assert fused.flatten().tolist() == [0, IGNORE_INDEX, IGNORE_INDEX]  # local top-1 pixel only


def test_baseline_selectors():
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.55, 0.45]]).T.reshape(1, 2, 1, 3)
    assert argmax_labels(probs).flatten().tolist() == [0, 1, 0]
    assert global_threshold_labels(probs, 0.6).flatten().tolist() == [0, 1, IGNORE_INDEX]


def test_histogram_memory_does_not_grow():
    hist = ConfidenceHistogram(19, 1024)
    before = hist.counts.shape
    for s in range(5):
        conf, pred = _random_predictions(s, n=1000, c=19)
        hist.update(conf, pred)
    assert hist.counts.shape == before and int(hist.counts.sum()) == 5000
