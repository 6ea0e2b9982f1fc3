"""Pseudo-label diagnostics against the target labels: accuracy, recall, shares and complementary-label
errors, checked against hand-computed confusions; absent (not zero) where the split has no labels."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sfseg.adapt.config import PseudoLabelConfig
from sfseg.adapt.pseudo_labels import build_pseudo_labeller
from sfseg.data.classes import ClassProtocol
from sfseg.data.normalization import Normalization
from sfseg.engine.evaluation.inference import Inference
from sfseg.engine.training.labelling import complementary_counts, label_round

THREE = ClassProtocol("three", ("road", "building", "car"))
RAW = Normalization("RGB", 255.0, (0.0, 0.0, 0.0), None)  # the network input is the image's values


class ImageIsLogits(nn.Module):
    """A 'network' whose logits are its input: each pixel's three channel values are its class scores."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


class InMemory(torch.utils.data.Dataset):
    def __init__(self, images, labels=None):
        self.images, self.labels = images, labels
        self.has_labels = labels is not None
        self.names = [f"{i}.png" for i in range(len(images))]

    def __len__(self):
        return len(self.images)

    def image(self, i):
        return self.images[i]

    def label(self, i):
        return self.labels[i]

    def __getitem__(self, i):
        item = {"image": self.images[i], "index": i}
        if self.has_labels:
            item["label"] = self.labels[i]
        return item


def random_case(seed=0, n=5, h=6, w=7):
    g = np.random.default_rng(seed)
    # Distinct scores per pixel (value mod 3 = channel), so ranks have no ties.
    channel = np.arange(3).reshape(3, 1, 1)
    images = [
        torch.from_numpy((g.integers(0, 80, (3, h, w)) * 3 + channel).astype(np.uint8)) for _ in range(n)
    ]
    labels = []
    for _ in range(n):
        lab = g.integers(0, 3, (h, w)).astype(np.uint8)
        lab[g.random((h, w)) < 0.15] = 255
        labels.append(torch.from_numpy(lab))
    return images, labels


def label(dataset, tmp_path, kind="global_threshold", ranks=None):
    cfg = PseudoLabelConfig(kind=kind, threshold=0.9, alpha=0.3)
    labeller = build_pseudo_labeller(cfg, 3, 0.3)
    paths, stats = label_round(
        Inference(ImageIsLogits(), RAW), dataset, labeller, tmp_path / "pl", THREE, batch_size=2,
        complementary_ranks=ranks,
    )  # fmt: skip
    return np.stack([np.asarray(Image.open(p)) for p in paths]), stats


@pytest.mark.parametrize("kind", ["global_threshold", "class_balanced", "argmax"])
def test_accuracy_recall_and_shares_equal_a_hand_computed_confusion(tmp_path, kind):
    images, labels = random_case()
    pseudo, stats = label(InMemory(images, labels), tmp_path, kind)
    gt = np.stack([lab.numpy() for lab in labels])
    assert (pseudo != 255).any() and (pseudo == 255).any() or kind == "argmax"
    for c, name in enumerate(THREE.names):
        selected = (pseudo == c).sum()
        right = ((pseudo == c) & (gt == c)).sum()
        true = (gt == c).sum()
        assert stats["pl_accuracy_per_class"][name] == pytest.approx(right / selected if selected else None)
        assert stats["pl_recall_per_class"][name] == pytest.approx(right / true)
        assert stats["true_share"][name] == pytest.approx(true / (gt != 255).sum())
    assert stats["pl_recall"] == pytest.approx(((pseudo == gt) & (gt != 255)).sum() / (gt != 255).sum())
    assert "nl_error" not in stats  # no complementary ranks asked for


def test_complementary_label_error_on_a_hand_made_case():
    # Four pixels, classes 0..2. Logits and true classes:
    #   p0 (30, 20, 10) true 1: rank 2 -> class 1 (wrong), rank 3 -> class 2
    #   p1 (10, 30, 20) true 2: rank 2 -> class 2 (wrong), rank 3 -> class 0
    #   p2 (20, 10, 30) true 2: rank 2 -> class 0,         rank 3 -> class 1
    #   p3 ( 5,  6,  7) unlabelled: not counted
    logits = torch.tensor([[30, 10, 20, 5], [20, 30, 10, 6], [10, 20, 30, 7]], dtype=torch.float32)
    logits = logits.view(1, 3, 2, 2)
    labels = torch.tensor([1, 2, 2, 255]).view(1, 2, 2)
    counts = torch.zeros(2, 4, dtype=torch.int64)
    complementary_counts(counts, logits, labels, [2, 3])
    assert counts[:, :3].tolist() == [[2, 2, 2], [0, 1, 1]]
    counts = torch.zeros(2, 4, dtype=torch.int64)
    complementary_counts(counts, logits, labels, [2])
    assert counts[:, :3].tolist() == [[1, 1, 1], [0, 1, 1]]


def test_complementary_error_in_the_labelling_pass_matches_brute_force(tmp_path):
    images, labels = random_case(seed=3)
    _, stats = label(InMemory(images, labels), tmp_path, ranks=[2, 3])
    chosen, wrong = np.zeros(3), np.zeros(3)
    for img, lab in zip(images, labels):
        order = np.argsort(-img.numpy().astype(float), axis=0, kind="stable")  # (3, H, W) classes by rank
        for k in (2, 3):
            comp = order[k - 1]
            valid = lab.numpy() != 255
            for c in range(3):
                chosen[c] += ((comp == c) & valid).sum()
                wrong[c] += ((comp == c) & valid & (lab.numpy() == c)).sum()
    for c, name in enumerate(THREE.names):
        assert stats["nl_error_per_class"][name] == pytest.approx(wrong[c] / chosen[c])
    assert stats["nl_error"] == pytest.approx(wrong.sum() / chosen.sum())


def test_diagnostics_are_absent_without_labels(tmp_path):
    images, _ = random_case()
    _, stats = label(InMemory(images), tmp_path, ranks=[2, 3])
    for key in ("pl_accuracy", "pl_recall", "pl_recall_per_class", "true_share", "nl_error"):
        assert key not in stats
    assert "pl_share" in stats  # the label-free statistics are still there


def test_diagnostics_figure_and_report(tiny_toycity, tiny_source, tmp_path):
    from sfseg.cli.main import main

    run = tmp_path / "ld"
    recipe = ["--config", "configs/toycity/ld.yaml", f"data.root={tiny_toycity}", f"checkpoint={tiny_source}"]
    args = ["adapt", *recipe, f"out={run}", "rounds=2", "epochs_per_round=1", "batch_size=4"]
    assert main(args) == 0
    assert (run / "figures" / "pl_diagnostics.png").is_file()
    page = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(page)]) == 0
    assert "Pseudo-label quality" in page.read_text()
