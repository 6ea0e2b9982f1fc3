import math

import pytest
import torch

from sfseg.adapt.config import PseudoLabelConfig
from sfseg.adapt.pseudo_labels import (
    MAX_SCORE,
    ConfidenceHistogram,
    argmax_labels,
    class_balanced_labels,
    confidence_scores,
    global_threshold_labels,
    local_top_alpha,
    score_to_confidence,
)
from sfseg.constants import IGNORE_INDEX
from tests.references import exact_thresholds


def _random_scores(seed: int, n: int = 20000, c: int = 7, scale: float = 2.5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, 1, 1, generator=g).mul(scale)
    score, pred = confidence_scores(logits)
    return score.flatten(), pred.flatten()


def test_score_is_a_monotone_non_saturating_confidence():
    logits = torch.tensor([[0.0, 1.0, 5.0, 20.0, 30.0, 45.0]]).T * torch.tensor([[1.0, 0.0, 0.0]])
    logits = logits.reshape(6, 3, 1, 1)
    score, pred = confidence_scores(logits)
    conf = logits.softmax(1).amax(1)
    assert torch.all(pred == 0)
    assert torch.allclose(score_to_confidence(score[:3].double()), conf[:3].double(), atol=1e-6)
    assert torch.all(score[1:] > score[:-1])  # strictly ordered ...
    assert conf[3] == conf[4] == conf[5] == 1.0  # ... where float32 confidences are tied at 1.0
    assert score.flatten()[5].item() == pytest.approx(45 - math.log(2), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.001, 0.1, 0.15, 0.5, 1.0])
@pytest.mark.parametrize("bins", [64, 65536])
def test_histogram_thresholds_match_exact_sort_within_one_bin(alpha, bins):
    score, pred = _random_scores(0)
    hist = ConfidenceHistogram(7, bins)
    for chunk in range(0, score.numel(), 3000):  # streamed in chunks, as over a dataset
        hist.update(score[chunk : chunk + 3000], pred[chunk : chunk + 3000])
    got = hist.thresholds(alpha).double()
    exact = exact_thresholds(score, pred, 7, alpha)
    width = MAX_SCORE / bins
    assert torch.all(got <= exact + 1e-9)
    assert torch.all(exact - got < width + 1e-9)
    for c in range(7):
        mine = (pred == c) & (score >= got[c])
        ref = (pred == c) & (score >= exact[c])
        assert torch.all(mine | ~ref), "histogram selection must contain the exact selection"
        extra = score[mine & ~ref].double()
        assert torch.all(extra >= got[c]) and torch.all(extra < exact[c])


@pytest.mark.parametrize("floor", [0.0, 0.05, 0.2])
def test_class_floor_raises_the_rare_classes_alpha_to_their_share(floor):
    from sfseg.adapt.pseudo_labels import ClassBalancedLabeller

    g = torch.Generator().manual_seed(4)
    pred = torch.multinomial(torch.tensor([0.7, 0.25, 0.04, 0.01]), 40000, True, generator=g)
    score = torch.rand(40000, generator=g) * 10
    labeller = ClassBalancedLabeller(PseudoLabelConfig(class_floor=floor), 4, alpha=0.2)
    labeller.observe(score, pred)
    n = torch.bincount(pred, minlength=4).double()
    # Brute force: class c keeps max(alpha, floor * alpha * N / N_c), at most all of it.
    want = [min(1.0, max(0.2, floor * 0.2 * n.sum().item() / n[c].item())) for c in range(4)]
    assert labeller.class_alphas.tolist() == pytest.approx(want)
    thr = labeller.thresholds.double()
    for c in range(4):
        exact = exact_thresholds(score, pred, 4, want[c])[c]
        assert exact - MAX_SCORE / 65536 - 1e-9 < thr[c] <= exact + 1e-9
        kept = ((pred == c) & (score >= thr[c])).sum().item()
        assert kept >= math.ceil(want[c] * n[c].item())
    kept = torch.stack([((pred == c) & (score >= thr[c])).sum() for c in range(4)]).double()
    # Every class keeps at least floor * alpha * N pixels (all of its own if it has fewer) ...
    assert torch.all(kept >= torch.minimum(n, torch.full_like(n, floor * 0.2 * n.sum().item())))
    if not floor:
        assert (kept / n).tolist() == pytest.approx([0.2] * 4, abs=5e-3)  # ... the paper's rule at 0


def test_exact_threshold_keeps_ceil_alpha_n():
    score, pred = _random_scores(1, n=5000)
    exact = exact_thresholds(score, pred, 7, 0.1)
    for c in range(7):
        n_c = int((pred == c).sum())
        kept = int(((pred == c) & (score >= exact[c])).sum())
        assert kept == math.ceil(0.1 * n_c)  # continuous random data: no ties


def test_never_predicted_class_selects_nothing_and_tiny_class_keeps_one_pixel():
    score = torch.tensor([3.0, 2.5, 2.0, 1.5, 4.0])
    pred = torch.tensor([0, 0, 0, 0, 2])
    hist = ConfidenceHistogram(3, 4000)
    hist.update(score, pred)
    thr = hist.thresholds(0.1)  # class 2: alpha * N = 0.1 < 1 -> keep its single best pixel
    assert math.isinf(thr[1])
    assert thr[2] <= 4.0 < thr[2] + 0.01
    assert thr[0] <= 3.0 < thr[0] + 0.01  # ceil(0.4) = 1 pixel of class 0


def test_saturated_predictions_still_select_the_top_alpha():
    # 100 pixels of class 0 whose softmax is exactly 1.0 in float32 (margins 20..40): thresholding the
    # confidence would keep all (>=) or none (>); the score keeps the top 10 %.
    margins = torch.linspace(20, 40, 100)
    logits = torch.zeros(1, 2, 10, 10)
    logits[0, 0] = margins.view(10, 10)
    assert torch.all(logits.softmax(1)[:, 0] == 1.0)
    hist = ConfidenceHistogram(2)
    hist.update(*confidence_scores(logits))
    labels = class_balanced_labels(logits, hist.thresholds(0.1), alpha=0.1, local=False)
    assert int((labels == 0).sum()) == 10
    assert torch.all(labels.view(-1)[90:] == 0) and torch.all(labels.view(-1)[:90] == IGNORE_INDEX)


def test_local_top_alpha_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    score = torch.rand(3, 10, 12, generator=g)
    sel = local_top_alpha(score, 0.15)
    for b in range(3):
        k = math.ceil(0.15 * 120)
        kth = score[b].flatten().sort(descending=True).values[k - 1]
        assert torch.equal(sel[b], score[b] >= kth)
        assert int(sel[b].sum()) == k


def _logits_of(probs):
    return torch.log(torch.tensor(probs)).T.reshape(1, len(probs[0]), 1, len(probs))


def test_class_balanced_fusion_and_channel_tests():
    # Pixel 0: argmax class 0 above its threshold. Pixel 1: argmax class 0 below it, but the class-1
    # channel is above class 1's threshold (selected only by the "any" test, labelled with the argmax 0).
    # Pixel 2: neither.
    logits = _logits_of([[0.9, 0.1], [0.55, 0.45], [0.6, 0.4]])
    thr = -torch.log1p(-torch.tensor([0.8, 0.42]))  # confidence 0.8 / 0.42 as scores
    argmax_sel = class_balanced_labels(logits, thr, alpha=0.01, local=False)
    assert argmax_sel.flatten().tolist() == [0, IGNORE_INDEX, IGNORE_INDEX]
    any_sel = class_balanced_labels(logits, thr, alpha=0.01, local=False, channel_test="any")
    assert any_sel.flatten().tolist() == [0, 0, IGNORE_INDEX]
    fused = class_balanced_labels(logits, torch.tensor([9.0, 9.0]), alpha=0.3, local=True)
    assert fused.flatten().tolist() == [0, IGNORE_INDEX, IGNORE_INDEX]  # local top-1 pixel only


def test_baseline_selectors():
    logits = _logits_of([[0.9, 0.1], [0.3, 0.7], [0.55, 0.45]])
    assert argmax_labels(logits).flatten().tolist() == [0, 1, 0]
    assert global_threshold_labels(logits, 0.6).flatten().tolist() == [0, 1, IGNORE_INDEX]


def test_histogram_memory_does_not_grow():
    hist = ConfidenceHistogram(19, 1024)
    before = hist.counts.shape
    for s in range(5):
        score, pred = _random_scores(s, n=1000, c=19)
        hist.update(score, pred)
    assert hist.counts.shape == before and int(hist.counts.sum()) == 5000


def test_radix_select_equals_kthvalue():
    # The CUDA path of the per-image selection (a two-level radix select on float bits), run on the CPU.
    from sfseg.models.ops import kth_largest

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4000, generator=g) * 40
    x[:, :40] = x[:, :1]  # ties
    x[0, 100:130] = math.inf  # saturated scores
    x[1, :2500] = 0.0
    for k in (1, 13, 40, 400, 3999, 4000):
        assert torch.equal(kth_largest(x, k, exact_radix=True), kth_largest(x, k, exact_radix=False)), k
