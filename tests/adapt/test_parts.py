import pytest
import torch

from sfseg.adapt import losses as L
from sfseg.adapt.config import MethodConfig, PseudoLabelConfig, TeacherConfig
from sfseg.adapt.parts import StepInputs, build_loss_parts, total_loss
from sfseg.errors import ConfigError, MethodError
from sfseg.registry import LOSS_PARTS


def test_composition_checks_declared_inputs():
    with pytest.raises(MethodError, match="needs pseudo-labels"):
        build_loss_parts(MethodConfig(pseudo_labels=PseudoLabelConfig(kind="none"), losses=["positive"]), 5)
    with pytest.raises(ConfigError, match=r"unknown loss part 'tent'.*registered: \["):
        build_loss_parts(MethodConfig(losses=["positive", "tent"]), 5)
    with pytest.raises(MethodError, match="not in losses"):
        build_loss_parts(MethodConfig(losses=["positive"], loss_weights={"negative": 2.0}), 5)
    with pytest.raises(MethodError, match="nothing to train"):
        build_loss_parts(MethodConfig(losses=[]), 5, rounds=2)


def test_total_loss_is_the_weighted_sum_of_the_parts():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, 4, generator=g)
    pseudo = torch.randint(0, 5, (2, 4, 4), generator=g)
    pseudo[:, :2] = 255
    cfg = MethodConfig(
        losses=sorted(set(LOSS_PARTS) - {"masked_consistency"}),
        loss_weights={"positive": 2.0, "negative": 0.5},
        teacher=TeacherConfig(ema=True),
    )
    parts = build_loss_parts(cfg, 5)
    t_label = torch.randint(0, 5, (2, 4, 4), generator=g)
    t_conf = torch.rand(2, 4, 4, generator=g)
    inputs = StepInputs(logits, pseudo, torch.Generator().manual_seed(7), t_label, t_conf)
    total, values = total_loss(parts, inputs)
    probs = logits.softmax(1)
    rank = L.sample_rank(5, 3, torch.Generator().manual_seed(7))
    expected = {
        "positive": L.positive_loss(logits, pseudo),
        "negative": L.negative_loss(probs, L.complementary_labels(probs, rank)),
        "entropy_unselected": L.entropy_unselected(probs, pseudo),
        "reference_code": L.reference_code_entropy(probs),
        "reference_code_balanced": L.balanced_reference_code_entropy(probs, 0.2),
        "entropy": L.entropy_loss(probs),
        "max_squares": L.max_squares_loss(probs),
        "diversity": L.diversity_loss(probs),
        "teacher_ce": L.confidence_weighted_ce(logits, t_label, t_conf, 0.97),
    }
    assert set(expected) == set(LOSS_PARTS) - {"masked_consistency"}
    for k, v in expected.items():
        assert values[k] == pytest.approx(v.item(), rel=1e-6)
    weights = {"positive": 2.0, "negative": 0.5}
    assert total.item() == pytest.approx(sum(weights.get(k, 1.0) * v.item() for k, v in expected.items()))


def test_masked_consistency_runs_the_student_on_patch_masked_images():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 10, 12, generator=g)
    conv = torch.nn.Conv2d(3, 4, 1)
    t_label = torch.randint(0, 4, (2, 10, 12), generator=g)
    t_conf = torch.rand(2, 10, 12, generator=g)
    cfg = MethodConfig(
        losses=["masked_consistency"], teacher=TeacherConfig(ema=True, mask_ratio=0.5, mask_block=4)
    )
    ((_, part),) = build_loss_parts(cfg, 4)
    inputs = StepInputs(conv(images), None, torch.Generator().manual_seed(3), t_label, t_conf, images, conv)
    value = part(inputs)
    # The reference: a 3 x 3 grid of 4-pixel blocks per image, each hidden with probability 0.5.
    keep = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(3)) >= 0.5
    mask = keep.repeat_interleave(4, 2).repeat_interleave(4, 3)[:, :, :10, :12].float()
    assert 0 < mask.mean() < 1
    ce = torch.nn.functional.cross_entropy(conv(images * mask), t_label, reduction="none").mean((1, 2))
    quality = (t_conf >= cfg.teacher.confidence_threshold).float().mean((1, 2))
    assert value.item() == pytest.approx((quality * ce).mean().item(), rel=1e-6)
    value.backward()
    assert conv.weight.grad is not None


def test_tent_trains_only_batchnorm_affine_parameters():
    from torch.nn.modules.batchnorm import _BatchNorm

    from sfseg.adapt.norm import freeze_bn_affine, train_only_norm_affine
    from sfseg.models import create_model

    model = create_model("deeplab_small", 3, width=8)
    train_only_norm_affine(model)
    for m in model.modules():
        for p in m.parameters(recurse=False):
            assert p.requires_grad == isinstance(m, _BatchNorm)
    model = create_model("deeplab_small", 3, width=8)
    freeze_bn_affine(model)
    for m in model.modules():
        for p in m.parameters(recurse=False):
            assert p.requires_grad != isinstance(m, _BatchNorm)
