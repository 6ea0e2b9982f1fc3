import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sfseg.adapt import losses as L
from sfseg.adapt.config import MethodConfig, PseudoLabelConfig, TeacherConfig
from sfseg.adapt.mixing import class_mix, class_mix_masks
from sfseg.adapt.parts import build_loss_parts
from sfseg.adapt.teacher import EMATeacher
from sfseg.constants import IGNORE_INDEX
from sfseg.errors import MethodError
from sfseg.models import create_model


def test_ema_update_and_decay_schedule():
    student = create_model("deeplab_small", 3, width=8)
    teacher = EMATeacher(student, max_decay=0.99)
    assert [teacher.decay(t) for t in (0, 1, 3, 1000)] == pytest.approx([0.0, 0.5, 0.75, 0.99])
    before = copy.deepcopy(teacher.model.state_dict())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(student, step=1)  # d = 0.5
    for (name, t), s in zip(teacher.model.named_parameters(), student.parameters()):
        assert torch.allclose(t, 0.5 * before[name] + 0.5 * s), name
    for t, s in zip(teacher.model.buffers(), student.buffers()):
        assert torch.equal(t, s)  # BN statistics are copied, not averaged
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_class_mix_masks_take_exactly_half_the_classes_of_each_image():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([[[0, 1, 2, 3], [4, 4, 255, 0]], [[5, 5, 5, 5], [5, 5, 5, 5]]])
    masks = class_mix_masks(labels, g)
    chosen = labels[0][masks[0]].unique()
    assert chosen.numel() == 2 and IGNORE_INDEX not in chosen  # floor(5 classes / 2)
    assert torch.equal(masks[0], torch.isin(labels[0], chosen))  # every pixel of a chosen class
    assert not masks[1].any()  # one class: floor(1 / 2) = 0


def test_rare_class_mix_favours_the_small_classes_of_each_image():
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[0, :2, :2] = 1  # 4 pixels
    labels[0, 10:, :] = 2  # 200 pixels
    g = torch.Generator().manual_seed(0)
    uniform = sum(bool(class_mix_masks(labels, g)[0, 0, 0]) for _ in range(400))
    rare = sum(bool(class_mix_masks(labels, g, rare_power=0.5)[0, 0, 0]) for _ in range(400))
    # One class of three is pasted: class 1 with probability 1/3 uniformly; with weights
    # pixels ** -0.5 = (1/14, 1/2, 1/sqrt(200)) it is 0.5 / (1/14 + 0.5 + 1/sqrt(200)) = 0.78.
    assert abs(uniform / 400 - 1 / 3) < 0.08
    assert abs(rare / 400 - 0.5 / (1 / 14 + 0.5 + 200**-0.5)) < 0.08
    masks = class_mix_masks(labels, g, rare_power=0.5)
    assert labels[0][masks[0]].unique().numel() == 1  # still half the classes, whole classes


def test_class_mix_pastes_image_i_onto_image_i_plus_one_consistently():
    b, h, w = 3, 4, 4
    images = torch.arange(b, dtype=torch.float).view(b, 1, 1, 1).expand(b, 3, h, w).clone()
    labels = torch.arange(b).view(b, 1, 1).expand(b, h, w).clone()
    conf = torch.tensor([0.1, 0.2, 0.3]).view(b, 1, 1).expand(b, h, w).clone()
    masks = torch.zeros(b, h, w, dtype=torch.bool)
    masks[0, :2] = True  # top half of image 0 lands on image 1
    masks[2, :, :1] = True  # first column of image 2 lands on image 0 (cyclic)
    mi, ml, mc = class_mix(masks, images, labels, conf)
    assert torch.all(mi[1, :, :2] == 0) and torch.all(mi[1, :, 2:] == 1)
    assert torch.all(ml[1, :2] == 0) and torch.all(mc[1, :2] == 0.1) and torch.all(mc[1, 2:] == 0.2)
    assert torch.all(ml[0, :, :1] == 2) and torch.all(ml[0, :, 1:] == 0)
    assert torch.equal(ml[2], labels[2])  # image 1 pastes nothing
    assert torch.equal(mi[:, 0], ml.float()) and torch.equal((mc * 10).round().long() - 1, ml)


def test_confidence_weighting_closed_form():
    logits = torch.zeros(2, 2, 1, 2)  # uniform: CE = log 2 everywhere
    labels = torch.tensor([[[0, 1]], [[1, IGNORE_INDEX]]])
    conf = torch.tensor([[[0.99, 0.5]], [[0.97, 0.97]]])  # image weights 1/2 and 1
    expected = (0.5 + 0.5 + 1.0) * torch.log(torch.tensor(2.0)) / 3
    assert L.confidence_weighted_ce(logits, labels, conf, 0.97, "labelled").item() == pytest.approx(
        expected.item()
    )
    # No saturated pixel: both averaging modes agree.
    assert L.confidence_weighted_ce(logits, labels, conf, 0.97, "positive").item() == pytest.approx(
        expected.item()
    )


def test_be_loss_averaging_modes_with_saturated_pixels():
    # Image 0: pixel a is saturated (float32 CE exactly 0), pixel b has CE log 2; image 1: one pixel with
    # CE log 2 and one ignored. Weights: image 0 has 1 of 2 pixels >= 0.97 (1/2), image 1 both (1).
    logits = torch.tensor([[[[200.0, 0.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])
    labels = torch.tensor([[[0, 1]], [[1, IGNORE_INDEX]]])
    conf = torch.tensor([[[0.99, 0.5]], [[0.97, 0.97]]])
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    assert ce[0, 0, 0].item() == 0.0  # saturated in float32
    log2 = math.log(2)
    # labelled: (0.5 * 0 + 0.5 * log2 + 1 * log2) / 3 labelled pixels
    assert L.confidence_weighted_ce(logits, labels, conf, 0.97, "labelled").item() == pytest.approx(
        (0.5 * log2 + log2) / 3
    )
    # positive (released): loss[loss > 0].mean() over the 2 unsaturated pixels
    assert L.confidence_weighted_ce(logits, labels, conf, 0.97, "positive").item() == pytest.approx(
        (0.5 * log2 + log2) / 2
    )
    # Hand-written released form: masked_select(weighting[:, None, None] * loss, loss > 0).mean()
    weighting = (conf >= 0.97).float().mean((1, 2))
    released = torch.masked_select(weighting[:, None, None] * ce, ce > 0).mean()
    assert L.confidence_weighted_ce(logits, labels, conf, 0.97, "positive").item() == pytest.approx(
        released.item()
    )


def test_teacher_parts_need_a_teacher():
    with pytest.raises(MethodError, match="needs a teacher"):
        build_loss_parts(MethodConfig(losses=["teacher_ce"]), 5)
    with pytest.raises(MethodError, match="classmix needs label maps"):
        build_loss_parts(
            MethodConfig(
                mixing="classmix", pseudo_labels=PseudoLabelConfig(kind="none"), losses=["negative"]
            ),
            5,
        )
    build_loss_parts(
        MethodConfig(mixing="classmix", teacher=TeacherConfig(ema=True), losses=["teacher_ce"]), 5
    )
