"""The pseudo-labelling pass: one forward per image gives the labels of two full passes (written out here,
the plain way: the network over every batch for the statistics, then over every batch again to select)."""

import numpy as np
import pytest
import torch
from PIL import Image

from sfseg.adapt.config import PseudoLabelConfig
from sfseg.adapt.pseudo_labels import build_pseudo_labeller, confidence_scores
from sfseg.data.classes import TOYCITY
from sfseg.data.toycity.dataset import toycity
from sfseg.engine.evaluation.inference import Inference, batch_size_hw
from sfseg.engine.runtime.loading import sharded_loader
from sfseg.engine.training.labelling import label_round
from sfseg.models import create_model
from sfseg.models.checkpoint import Normalization


def _setup(root, kind, **inference):
    torch.manual_seed(0)
    model = create_model("deeplab_small", TOYCITY.num_classes, width=8, output_stride=4)
    model.train()  # BN batch statistics: labels depend on the batch composition
    data = toycity(root, "train", TOYCITY, labels="auto")
    labeller = build_pseudo_labeller(PseudoLabelConfig(kind=kind, alpha=0.2), TOYCITY.num_classes, 0.2)
    return Inference(model, Normalization(), **inference), data, labeller


def _run(root, tmp, passes, cache_gib=4.0, kind="class_balanced", **inference):
    inf, data, labeller = _setup(root, kind, **inference)
    if passes == 2:
        return _two_passes(inf, data, labeller), None
    paths, stats = label_round(
        inf, data, labeller, tmp / f"pl{passes}_{cache_gib}", TOYCITY, batch_size=3, cache_gib=cache_gib
    )
    return np.stack([np.asarray(Image.open(p)) for p in paths]), stats


@torch.no_grad()
def _two_passes(inf, data, labeller, batch_size=3):
    """The reference: the network runs over every batch for the statistics, then again to select."""
    batches = list(sharded_loader(inf.view(data), batch_size))
    if labeller.needs_statistics:
        for batch in batches:
            labeller.observe(
                *confidence_scores(inf.threshold_logits(inf.raw(batch["image"]), batch_size_hw(batch)))
            )
    out = []
    for batch in batches:
        logits = inf.label_logits(inf.raw(batch["image"]), batch_size_hw(batch))
        out.append(labeller.select(*confidence_scores(logits), logits).to(torch.uint8).numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("kind", ["class_balanced", "argmax", "global_threshold"])
def test_one_forward_equals_two_passes(tiny_toycity, tmp_path, kind):
    one, s1 = _run(tiny_toycity, tmp_path, 1, kind=kind)
    two, _ = _run(tiny_toycity, tmp_path, 2, kind=kind)
    assert np.array_equal(one, two)  # the tiny split has labels: diagnostics computed in the selection pass


def test_spilled_cache_equals_the_in_memory_one(tiny_toycity, tmp_path):
    mem, s1 = _run(tiny_toycity, tmp_path, 1, cache_gib=4.0)
    spill, s2 = _run(tiny_toycity, tmp_path, 1, cache_gib=0.0)  # forces the memory-mapped file
    assert np.array_equal(mem, spill) and s1 == s2
    assert not list(tmp_path.rglob("*.bin"))  # the spill files are removed


def test_one_forward_with_the_two_step_pipeline(tiny_toycity, tmp_path):
    kw = {"input_size": [48, 24], "resize": "pil", "align_corners": True, "upsample": "two_step"}
    one, _ = _run(tiny_toycity, tmp_path, 1, **kw)
    two, _ = _run(tiny_toycity, tmp_path, 2, **kw)
    assert np.array_equal(one, two) and one.shape[1:] == (32, 64)


def test_pseudo_label_pngs_are_palette_images_of_the_indices(tmp_path):
    from sfseg.engine.training.label_io import PseudoLabelWriter

    rng = np.random.default_rng(0)
    label = rng.integers(0, 12, (37, 53)).astype(np.uint8)
    label[:5] = 255
    writer = PseudoLabelWriter(tmp_path, TOYCITY.palette())
    writer.submit(3, label)
    writer.close()
    im = Image.open(tmp_path / "00003.png")
    assert im.mode == "P" and im.size == (53, 37)
    assert np.array_equal(np.asarray(im), label)
    assert im.getpalette()[: 3 * 12] == TOYCITY.palette()[: 3 * 12]
