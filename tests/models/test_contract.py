"""The model contract's consumers: AdamW parameter groups, the warm-up schedule, normalisation-aware method
parts on BatchNorm and LayerNorm networks, inference settings stored in checkpoints, and recipe keys that
were renamed."""

import pytest
import torch
from torch import nn

from sfseg.adapt.norm import adabn, set_bn_mode, train_only_norm_affine
from sfseg.config import load_config
from sfseg.engine.training.optim import OptimConfig, build_optimizer, lr_factor, poly_step
from sfseg.engine.training.recipe import AdaptConfig, SourceConfig
from sfseg.errors import ConfigError, MethodError
from sfseg.models.base import SegmentationModel


class TinyTransformerish(SegmentationModel):
    """LayerNorm only (no BatchNorm), a position embedding, a linear head."""

    arch = "tiny_ln"

    def __init__(self, num_classes=3, dim=8):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Conv2d(dim, num_classes, 1)

    def forward_with_features(self, x):
        f = self.embed(x) + self.pos_embed
        f = self.norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(f), f

    def head_parameters(self):
        return list(self.head.parameters())

    def no_weight_decay(self):
        return {"pos_embed"}


def _groups(opt):
    return [(g["lr"], g["weight_decay"], {id(p) for p in g["params"]}) for g in opt.param_groups]


def test_adamw_groups_exempt_norms_biases_and_named_parameters_from_decay():
    model = TinyTransformerish()
    opt = build_optimizer(model, OptimConfig(kind="adamw", lr=6e-5, head_lr_mult=10.0, weight_decay=0.01))
    assert isinstance(opt, torch.optim.AdamW)
    where = {}
    for lr, wd, ids in _groups(opt):
        for name, p in model.named_parameters():
            if id(p) in ids:
                where[name] = (pytest.approx(lr), wd)
    assert where == {
        "embed.weight": (6e-5, 0.01),
        "embed.bias": (6e-5, 0.0),
        "pos_embed": (6e-5, 0.0),
        "norm.weight": (6e-5, 0.0),
        "norm.bias": (6e-5, 0.0),
        "head.weight": (6e-4, 0.01),
        "head.bias": (6e-4, 0.0),
    }


def test_sgd_keeps_two_groups_with_decay_everywhere():
    model = TinyTransformerish()
    opt = build_optimizer(model, OptimConfig(kind="sgd", lr=1e-3, head_lr_mult=10.0, weight_decay=5e-4))
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [
        (1e-3, 5e-4, 5),
        (1e-2, 5e-4, 2),
    ]


def test_warmup_then_poly_matches_its_closed_form():
    cfg = OptimConfig(
        kind="adamw", lr=1.0, warmup_steps=10, warmup_ratio=1e-6, nominal_steps=100, poly_power=1.0
    )
    assert lr_factor(cfg, 0) == pytest.approx(1e-6)
    assert lr_factor(cfg, 5) == pytest.approx((1e-6 + (1 - 1e-6) * 0.5) * 0.95)
    assert lr_factor(cfg, 10) == pytest.approx(0.90)
    assert lr_factor(cfg, 100) == 0.0
    opt = build_optimizer(TinyTransformerish(), cfg)
    poly_step(opt, cfg, 50)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_normalisation_parts_on_a_layernorm_network():
    model = TinyTransformerish()
    with pytest.raises(MethodError, match="tiny_ln has no BatchNorm layers"):
        adabn(model, [torch.randn(2, 3, 4, 4)])
    set_bn_mode(model, "frozen")  # nothing to freeze: both modes are the same network
    train_only_norm_affine(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"norm.weight", "norm.bias"}
    assert len(model.norm_layers()) == 1 and model.batch_norm_layers() == []


def test_tent_on_a_network_without_any_normalisation_layer_is_refused():
    class Bare(SegmentationModel):
        arch = "bare"

        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, 2, 1)

        def forward_with_features(self, x):
            return self.head(x), x

        def head_parameters(self):
            return list(self.head.parameters())

    with pytest.raises(MethodError, match="bare has no normalisation layer"):
        train_only_norm_affine(Bare())


@pytest.mark.parametrize(
    "cls, override, expect",
    [
        (
            SourceConfig,
            "data.crop=[64, 32]",
            "data.crop is no longer a key: the training window is data.augment",
        ),
        (SourceConfig, "data.domain=target", "data.domain is no longer a key: name the split"),
        (SourceConfig, "data.resize=[80, 45]", "the old source-training size; write data.augment"),
        (AdaptConfig, "trainable=bn_affine", "bn_affine is now norm_affine"),
        (AdaptConfig, "method.kind=magic", "unknown method 'magic'"),
        (AdaptConfig, "mixing=cutmix", "unknown mixing 'cutmix'"),
        (AdaptConfig, "pseudo_labels.kind=oracle", "unknown pseudo-labeller 'oracle'"),
        (AdaptConfig, "select.validator=vibes", "unknown validator 'vibes'"),
        (AdaptConfig, "losses=[positive, negativ]", "unknown loss part 'negativ' (did you mean 'negative'?)"),
        (AdaptConfig, "data.dataset=kitti", "unknown dataset 'kitti'"),
        (SourceConfig, "arch=resnet9000", "unknown model 'resnet9000'"),
    ],
)
def test_renamed_and_unregistered_names_are_clear_errors(cls, override, expect):
    recipe = "configs/toycity/source.yaml" if cls is SourceConfig else "configs/toycity/ld.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(cls, recipe, [override])
    assert expect in str(e.value) and f"command-line override '{override}'" in str(e.value)


def test_recipes_compose_parts_along_axes():
    """The GTA5 and SYNTHIA LD recipes are the same parts but for the data part (``_base_`` as a list)."""
    from sfseg.config import to_dict

    gta = to_dict(load_config(AdaptConfig, "configs/gta5_to_cityscapes/ld.yaml"))
    syn = to_dict(load_config(AdaptConfig, "configs/synthia_to_cityscapes/ld.yaml"))
    assert gta["method"] == syn["method"] and gta["schedule"] == syn["schedule"]
    assert gta["data"]["protocol"] == "cityscapes19" and syn["data"]["protocol"] == "synthia16"
    ref = to_dict(load_config(AdaptConfig, "configs/gta5_to_cityscapes/ld_refcode.yaml"))
    assert ref["runtime"]["channels_last"] == "off" and ref["data"]["resize"] == "pil"
