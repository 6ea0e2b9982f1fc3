import math

import pytest
import torch
import torch.nn.functional as F

from sfseg.adapt import losses as L
from sfseg.constants import IGNORE_INDEX


@pytest.mark.parametrize(
    "num_classes, expected", [(19, range(6, 13)), (16, range(5, 12)), (12, range(3, 10))]
)
def test_sample_rank_is_the_released_codes_one_based_k(num_classes, expected):
    # The released code: k = C // 2 + randint(-3, 3) (both ends inclusive), a 1-based rank.
    g = torch.Generator().manual_seed(0)
    seen = {L.sample_rank(num_classes, 3, g) for _ in range(3000)}
    assert seen == set(expected)
    assert seen == {num_classes // 2 + d for d in range(-3, 4)}


def test_sample_rank_never_picks_the_top_class():
    g = torch.Generator().manual_seed(0)
    assert {L.sample_rank(4, 3, g) for _ in range(500)} == {2, 3, 4}  # clipped to [2, C]


@pytest.mark.parametrize("num_classes", [19, 16])
def test_complementary_labels_match_a_hand_written_topk(num_classes):
    g = torch.Generator().manual_seed(1)
    probs = torch.randn(2, num_classes, 3, 4, generator=g).softmax(1)
    for k in range(num_classes // 2 - 3, num_classes // 2 + 4):
        comp = L.complementary_labels(probs, k)
        # The released code on (N, C) rows: topk(p, k, dim=1, sorted=True).indices[:, -1].
        rows = probs.permute(0, 2, 3, 1).reshape(-1, num_classes)
        released = torch.topk(rows, k, dim=1, sorted=True).indices[:, -1].view(2, 3, 4)
        assert torch.equal(comp, released)
        for b in range(2):
            for y in range(3):
                for x in range(4):
                    order = sorted(range(num_classes), key=lambda c: -probs[b, c, y, x].item())
                    assert comp[b, y, x].item() == order[k - 1]  # the k-th most probable, counting from 1


def test_negative_loss_closed_form():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5]]).T.reshape(1, 3, 1, 2)
    comp = torch.tensor([[[1, 2]]])
    expected = -(math.log(1 - 0.2) + math.log(1 - 0.5)) / 2
    assert L.negative_loss(probs, comp).item() == pytest.approx(expected, rel=1e-6)
    saturated = torch.tensor([[0.0, 1.0]]).T.reshape(1, 2, 1, 1)
    assert L.negative_loss(saturated, torch.tensor([[[1]]])).item() == pytest.approx(
        -math.log(1e-5), rel=1e-5
    )


def test_positive_loss_averages_over_selected_pixels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert L.positive_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    none = torch.full((1, 1, 3), IGNORE_INDEX)
    out = L.positive_loss(logits.requires_grad_(), none)
    assert out.item() == 0.0 and out.requires_grad


def test_entropy_unselected_closed_form():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]]).T.reshape(1, 2, 1, 3)
    labels = torch.tensor([[[IGNORE_INDEX, IGNORE_INDEX, 0]]])
    h = lambda p: -sum(q * math.log(q) for q in p if q > 0)  # noqa: E731
    expected = (h([0.5, 0.5]) + h([0.9, 0.1])) / 2
    assert L.entropy_unselected(probs, labels).item() == pytest.approx(expected, rel=1e-5)


def test_balanced_reference_code_term_weights_pixels_by_inverse_image_share():
    # Image 0: 3 pixels predicted as class 0, 1 as class 1; image 1: all 4 as class 1.
    p0 = [[0.7, 0.3], [0.6, 0.4], [0.8, 0.2], [0.1, 0.9]]
    p1 = [[0.4, 0.6], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]]
    probs = torch.tensor([p0, p1]).permute(0, 2, 1).reshape(2, 2, 2, 2)

    def term(p):
        lse = math.log(sum(math.exp(q) for q in p))
        return -sum(q * (q - lse) for q in p)

    power = 0.5
    weights = [(4 / 3) ** power] * 3 + [4**power] + [1.0] * 4
    expected = sum(w * term(p) for w, p in zip(weights, p0 + p1)) / 8
    assert L.image_class_weights(probs, power).flatten().tolist() == pytest.approx(weights)
    assert L.balanced_reference_code_entropy(probs, power).item() == pytest.approx(expected, rel=1e-6)
    # power 0 is the released term itself
    assert L.balanced_reference_code_entropy(probs, 0.0).item() == pytest.approx(
        L.reference_code_entropy(probs).item(), rel=1e-6
    )


def test_reference_code_term_is_log_softmax_of_probabilities():
    probs = torch.tensor([[0.7, 0.3]]).T.reshape(1, 2, 1, 1)
    lse = math.log(math.exp(0.7) + math.exp(0.3))
    expected = -(0.7 * (0.7 - lse) + 0.3 * (0.3 - lse))
    assert L.reference_code_entropy(probs).item() == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3)))  # not an entropy


def test_negative_loss_gradient_pushes_the_complementary_class_down():
    logits = torch.zeros(1, 4, 1, 1, requires_grad=True)
    loss = L.negative_loss(F.softmax(logits, 1), torch.tensor([[[2]]]))
    loss.backward()
    assert logits.grad[0, 2].item() > 0 and all(logits.grad[0, c].item() < 0 for c in (0, 1, 3))


def test_entropy_and_max_squares_closed_form():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).T.reshape(1, 2, 1, 2)
    h = [math.log(2), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))]
    assert L.entropy_loss(probs).item() == pytest.approx(sum(h) / 2, rel=1e-6)
    assert L.max_squares_loss(probs).item() == pytest.approx(-0.5 * (0.5 + 0.82) / 2, rel=1e-6)


def test_diversity_is_the_negative_entropy_of_the_mean_prediction():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # mean (0.5, 0.5): most diverse
    assert L.diversity_loss(probs).item() == pytest.approx(-math.log(2), rel=1e-6)
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 2)  # one class only: least diverse
    assert L.diversity_loss(same).item() == pytest.approx(0.0, abs=1e-6)
