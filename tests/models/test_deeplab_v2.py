"""DeepLab-v2 ResNet-101: fidelity to the field's layout, and importing each checkpoint family."""

from fractions import Fraction

import pytest
import torch

from sfseg.data.classes import SYNTHIA16
from sfseg.data.normalization import CAFFE_BGR, IMAGENET
from sfseg.engine.training.optim import OptimConfig, build_optimizer
from sfseg.errors import CheckpointError
from sfseg.models import create_model, load_checkpoint
from sfseg.models.deeplab_v2 import DeepLabV2
from sfseg.models.deeplab_v2_import import CRST_BGR
from sfseg.models.foreign import CheckpointFormatError, import_checkpoint, import_state_dict

C = 19


def _bottleneck_params(cin, width):
    # conv1 + conv2 + conv3 weights, 3 BNs (weight + bias), no biases in convs
    return cin * width + 9 * width * width + width * 4 * width + 2 * (width + width + 4 * width)


def _r101_backbone_params():
    n = 3 * 64 * 49 + 2 * 64  # stem conv + bn
    cin = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 23, 3)):
        n += cin * width * 4 + 2 * width * 4  # downsample conv + bn
        for _ in range(blocks):
            n += _bottleneck_params(cin, width)
            cin = width * 4
    return n


@pytest.fixture(scope="module")
def r101():
    torch.manual_seed(0)
    return DeepLabV2(C).eval()


def test_output_stride_and_ceil_pool(r101):
    x = torch.zeros(1, 3, 512, 1024)
    with torch.no_grad():
        assert r101(x).shape == (1, C, 65, 129)
        assert create_model("deeplabv2_r101", C, backbone="torchvision").eval()(x).shape == (1, C, 64, 128)


def test_parameter_counts_and_frozen_bn(r101):
    backbone = _r101_backbone_params()
    assert backbone == 42_500_160  # torchvision's resnet101 (44,549,160) without its 1000-class fc
    head = 4 * (2048 * 9 * C + C)
    assert sum(p.numel() for p in r101.parameters()) == backbone + head
    bn = [p for m in r101.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    assert bn and not any(p.requires_grad for p in bn)
    sd = r101.state_dict()
    assert len([k for k in sd if not k.startswith("layer5.")]) == 624
    assert len([k for k in sd if not k.startswith("layer5.") and "num_batches_tracked" not in k]) == 520
    opt = build_optimizer(r101, OptimConfig(lr=1e-4, head_lr_mult=10))
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == [1e-4, pytest.approx(1e-3)]
    assert sum(p.numel() for p in opt.param_groups[1]["params"]) == head


def test_caffe_stride_is_on_the_1x1(r101):
    b = r101.layer2[0]
    assert b.conv1.stride == (2, 2) and b.conv2.stride == (1, 1)
    assert all(blk.conv2.dilation == (2, 2) for blk in r101.layer3)
    assert all(blk.conv2.dilation == (4, 4) for blk in r101.layer4)
    tv = DeepLabV2(C, backbone="torchvision", blocks=(1, 2, 2, 2))
    assert tv.layer2[0].conv2.stride == (2, 2) and tv.layer3[0].conv2.dilation == (1, 1)
    assert tv.layer4[0].conv2.dilation == (2, 2) and tv.layer4[1].conv2.dilation == (4, 4)


def _backbone(sd, nbt=False):
    return {k: v for k, v in sd.items() if not k.startswith("layer5.") and (nbt or "num_batches" not in k)}


def _head(sd, prefix, n_classes=C, cin=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(4):
        out[f"{prefix}.conv2d_list.{i}.weight"] = torch.randn(n_classes, cin, 3, 3, generator=g) * 0.01
        out[f"{prefix}.conv2d_list.{i}.bias"] = torch.randn(n_classes, generator=g)
    return out


def _expected(r101, head, branches, x):
    """Logits computed by hand from the reference backbone and the named head's first ``branches``."""
    f = r101.features(x)
    out = 0
    for i, d in enumerate((6, 12, 18, 24)[:branches]):
        w, b = head[f"conv2d_list.{i}.weight"], head[f"conv2d_list.{i}.bias"]
        out = out + torch.nn.functional.conv2d(f, w, b, padding=d, dilation=d)
    return out


FAMILIES = {
    # name: (builder(sd) -> foreign dict, predicting prefix, branches, normalization)
    "adaptsegnet_single": (lambda sd: {**_backbone(sd), **_head(sd, "layer5")}, "layer5", 2, CAFFE_BGR),
    "adaptsegnet_multi": (
        lambda sd: {**_backbone(sd), **_head(sd, "layer5", cin=1024, seed=1), **_head(sd, "layer6", seed=2)},
        "layer6",
        2,
        CAFFE_BGR,
    ),
    "ldbe": (
        lambda sd: {
            f"module.{k}": v
            for k, v in {**_backbone(sd, True), **_head(sd, "layer5"), **_head(sd, "layer6", seed=3)}.items()
        },  # fmt: skip
        "layer5",
        4,
        CAFFE_BGR,
    ),
    "crst": (lambda sd: {**_backbone(sd), **_head(sd, "layer5")}, "layer5", 4, CRST_BGR),
    "tllib": (
        lambda sd: {
            **{f"backbone.{k}": v for k, v in _backbone(sd, True).items()},
            **_head(sd, "classifier"),
        },  # fmt: skip
        "classifier",
        4,
        CAFFE_BGR,
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_each_family(r101, family):
    build, prefix, branches, norm = FAMILIES[family]
    foreign = build(r101.state_dict())
    hint = family if family in ("adaptsegnet_single", "crst") else ""
    ckpt = import_state_dict(foreign, family=hint)
    assert ckpt.provenance["family"] == family
    assert ckpt.normalization == norm and ckpt.arch_kwargs["branches"] == branches
    model = ckpt.build().eval()  # strict load
    x = torch.randn(1, 3, 41, 57)
    head = {
        k.split(prefix + ".", 1)[1]: v
        for k, v in foreign.items()
        if k.removeprefix("module.").startswith(prefix + ".")
    }
    with torch.no_grad():
        torch.testing.assert_close(model(x), _expected(r101, head, branches, x), rtol=1e-4, atol=1e-4)
    unused = ckpt.provenance["unused_keys"]
    expected_unused = {
        "adaptsegnet_single": 4,  # branches 2, 3
        "adaptsegnet_multi": 8 + 4,  # the layer3 head, layer6 branches 2, 3
        "ldbe": 8,  # layer6
        "crst": 0,
        "tllib": 0,
    }[family]
    assert len(unused) == expected_unused


def test_ambiguous_family_needs_a_hint(r101):
    with pytest.raises(CheckpointFormatError, match="family=adaptsegnet_single or family=crst"):
        import_state_dict(FAMILIES["crst"][0](r101.state_dict()))


def test_backbone_only_files_get_a_new_head(r101, tmp_path):
    sd = r101.state_dict()
    caffe = {f"Scale.{k}": v for k, v in {**_backbone(sd), **_head(sd, "layer5", n_classes=21)}.items()}
    with pytest.raises(ValueError, match="no segmentation head"):
        import_state_dict(caffe)
    ckpt = import_state_dict(caffe, protocol=SYNTHIA16)
    assert ckpt.num_classes == 16 and ckpt.provenance["filled_num_batches_tracked"] == 104
    assert len(ckpt.provenance["unused_keys"]) == 8
    torch.testing.assert_close(ckpt.state_dict["layer3.7.conv2.weight"], sd["layer3.7.conv2.weight"])

    tv = {**_backbone(sd, True), "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet101.pth"
    torch.save({f"_orig_mod.{k}": v for k, v in tv.items()}, path)
    ckpt = load_checkpoint(path, classes="cityscapes19")
    assert ckpt.provenance["family"] == "torchvision_imagenet" and ckpt.normalization == IMAGENET
    assert ckpt.arch_kwargs["backbone"] == "torchvision" and ckpt.provenance["unused_keys"] == [
        "fc.bias",
        "fc.weight",
    ]


def test_unknown_and_broken_files_are_refused(r101, tmp_path):
    with pytest.raises(CheckpointFormatError, match="keys seen"):
        import_state_dict({"encoder.weight": torch.zeros(3)})
    with pytest.raises(CheckpointFormatError, match="ProDA"):
        import_state_dict({"layer5.bottleneck.0.weight": torch.zeros(3)})
    partial = FAMILIES["ldbe"][0](r101.state_dict())
    partial.pop("module.layer4.2.conv3.weight")
    with pytest.raises(CheckpointFormatError, match="missing"):
        import_state_dict(partial)
    # ProDA's .pkl stores a NumPy scalar next to the weights: read weights-only (NumPy scalars allowed),
    # recognised and refused.
    path = tmp_path / "proda.pkl"
    state = {"layer5.bottleneck.0.weight": torch.zeros(1), "conv1.weight": torch.zeros(1)}
    torch.save({"ResNet101": {"model_state": state}, "iter": __import__("numpy").float64(3)}, path)
    with pytest.raises(CheckpointFormatError, match="ProDA"):
        import_checkpoint(path)
    # Arbitrary Python objects are never unpickled, and the message does not suggest unpickling them.
    path = tmp_path / "objects.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "extra": Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match="holds Python objects other than tensors") as e:
        import_checkpoint(path)
    assert "trust" not in str(e.value) and "weights_only=False" not in str(e.value)


def test_cli_import_checkpoint(r101, tmp_path, capsys):
    from sfseg.cli.main import main

    src = tmp_path / "GTA5_source.pth"
    torch.save(FAMILIES["ldbe"][0](r101.state_dict()), src)
    assert main(["import-checkpoint", str(src), str(tmp_path / "out.pt")]) == 0
    out = capsys.readouterr().out
    assert "family: ldbe" in out and "layer6.conv2d_list.0.weight" in out
    ckpt = load_checkpoint(tmp_path / "out.pt")
    assert ckpt.provenance["family"] == "ldbe" and ckpt.class_names[0] == "road"
    torch.save(FAMILIES["crst"][0](r101.state_dict()), src)
    assert main(["import-checkpoint", str(src), str(tmp_path / "crst.pt")]) == 2
    assert "family=crst" in capsys.readouterr().err and not (tmp_path / "crst.pt").exists()
    assert main(["import-checkpoint", str(src), str(tmp_path / "crst.pt"), "--family", "crst"]) == 0
    assert load_checkpoint(tmp_path / "crst.pt").normalization == CRST_BGR
