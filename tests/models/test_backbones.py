"""The modern backbones: MiT (SegFormer/DAFormer) and DINOv2 ViTs. Exact sizes, the checkpoint formats the
field publishes (names and shapes from tests/fixtures/checkpoint_formats.json, random values), the attention
kernels, agreement with Hugging Face transformers where it is installed, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sfseg.data.classes import CITYSCAPES19
from sfseg.models import create_model
from sfseg.models.foreign import import_checkpoint, import_state_dict

FORMATS = json.loads((Path(__file__).parents[1] / "fixtures" / "checkpoint_formats.json").read_text())


def _count(model, prefix=""):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def test_exact_parameter_counts():
    with torch.device("meta"):
        b5 = create_model("daformer_mit", 19, variant="b5")
        vitl = create_model("dinov2_vit", 19, variant="l")
        vitg = create_model("dinov2_vit", 19, variant="g")
    assert _count(b5, "backbone.") == 81_443_008
    assert _count(b5, "decode_head.") == 3_712_275
    assert _count(b5) == 85_155_283
    assert _count(vitl, "backbone.") == 304_368_640  # facebookresearch/dinov2 vit_large, 518 px
    assert _count(vitg, "backbone.") == 1_136_480_768  # vit_giant2 with the fused SwiGLU


def _fake(keys: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(0)
        elif "running_var" in k:
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * 0.02
    return out


@pytest.mark.parametrize("name", sorted(k for k in FORMATS if not k.startswith("_")))
def test_every_published_format_imports_with_exactly_the_expected_ignored_keys(name, tmp_path):
    fmt = FORMATS[name]
    path = tmp_path / f"{name}.pth"
    nested = name.startswith(("daformer", "hrda", "segformer_mmseg"))  # files saved by mmcv's runner
    payload = {"meta": {}, "state_dict": _fake(fmt["keys"])} if nested else _fake(fmt["keys"])
    torch.save(payload, path)
    family = fmt["family"] if fmt["family"].endswith("_ema") else ""  # detected, except the opt-in teacher
    ckpt = import_checkpoint(path, family, CITYSCAPES19)
    assert ckpt.provenance["family"] == fmt["family"] and ckpt.arch == fmt["arch"]
    assert ckpt.provenance["unused_keys"] == sorted(fmt["unused"])
    ckpt.build()  # strict: every parameter came from the file or is a declared new head
    assert ckpt.num_classes == 19


def test_the_teacher_is_imported_on_request_and_the_student_by_default(tmp_path):
    fmt = FORMATS["daformer_uda_b0"]
    sd = _fake(fmt["keys"])
    student, teacher = import_state_dict(dict(sd)), import_state_dict(dict(sd), "daformer_ema")
    key = "backbone.patch_embed1.proj.weight"
    assert torch.equal(student.state_dict[key], sd["model." + key])
    assert torch.equal(teacher.state_dict[key], sd["ema_model." + key])


def test_kv_rows_split_into_keys_then_values():
    """A checkpoint whose kv rows hold their row index: k must come from rows 0..C-1, v from C..2C-1."""
    model = create_model("daformer_mit", 19, variant="b0").eval()
    attn = model.backbone.block4[0].attn  # sr 1: the tokens themselves give k and v
    c = attn.q.in_features
    with torch.no_grad():
        attn.kv.weight.zero_()
        attn.kv.bias.copy_(torch.arange(2 * c, dtype=torch.float32))
        k, v = attn.keys_values(torch.randn(1, 6, c), 2, 3)
    assert k.flatten(2).min() == 0 and k.flatten(2).max() == c - 1
    assert v.flatten(2).min() == c and v.flatten(2).max() == 2 * c - 1


def test_hugging_face_k_and_v_become_kv_in_that_order():
    sd = _fake(FORMATS["segformer_hf5_b0"]["keys"])
    ckpt = import_state_dict(dict(sd))
    k = sd["segformer.stages.3.blocks.0.attention.k_proj.weight"]
    v = sd["segformer.stages.3.blocks.0.attention.v_proj.weight"]
    assert torch.equal(ckpt.state_dict["backbone.block4.0.attn.kv.weight"], torch.cat([k, v]))


def _nvlabs_head_reference(head: dict[str, torch.Tensor], features: list[torch.Tensor]) -> torch.Tensor:
    """NVlabs SegFormer's decoder written out (eval mode): it concatenates c4, c3, c2, c1."""
    size = features[0].shape[-2:]
    parts = []
    for n in (4, 3, 2, 1):
        f = features[n - 1]
        e = F.linear(
            f.flatten(2).transpose(1, 2), head[f"linear_c{n}.proj.weight"], head[f"linear_c{n}.proj.bias"]
        )
        e = e.transpose(1, 2).reshape(f.shape[0], -1, *f.shape[-2:])
        parts.append(F.interpolate(e, size=size, mode="bilinear", align_corners=False))
    x = F.conv2d(torch.cat(parts, 1), head["linear_fuse.conv.weight"])
    x = F.batch_norm(x, head["linear_fuse.bn.running_mean"], head["linear_fuse.bn.running_var"],
                     head["linear_fuse.bn.weight"], head["linear_fuse.bn.bias"], eps=1e-5).relu()  # fmt: skip
    return F.conv2d(x, head["linear_pred.weight"], head["linear_pred.bias"])


def test_nvlabs_and_daformer_segformer_heads_give_equal_logits():
    fmt = FORMATS["segformer_nvlabs_b0"]
    sd = _fake(fmt["keys"], seed=1)
    ours = import_state_dict(dict(sd)).build().eval()
    head = {k[len("decode_head.") :]: v for k, v in sd.items() if k.startswith("decode_head.")}
    with torch.no_grad():
        features = ours.backbone(torch.randn(2, 3, 64, 96))
        got = ours.decode_head.forward_with_features(features)[0]
        want = _nvlabs_head_reference(head, features)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # DAFormer's SegFormer head keeps c1..c4: the same weights in its layout give the same network.
    daf = dict(sd)
    for n in (1, 2, 3, 4):
        for leaf in ("weight", "bias"):
            daf[f"decode_head.linear_c.{n - 1}.proj.{leaf}"] = daf.pop(f"decode_head.linear_c{n}.proj.{leaf}")
    blocks = sd["decode_head.linear_fuse.conv.weight"].chunk(4, dim=1)
    daf["decode_head.linear_fuse.conv.weight"] = torch.cat(list(reversed(blocks)), 1)
    other = import_state_dict(daf).build().eval()
    with torch.no_grad():
        torch.testing.assert_close(other.decode_head.forward_with_features(features)[0], got)


def _bn_eval(x: torch.Tensor, head: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.batch_norm(x, head[f"{name}.bn.running_mean"], head[f"{name}.bn.running_var"],
                        head[f"{name}.bn.weight"], head[f"{name}.bn.bias"], eps=1e-5)  # fmt: skip


def _mmseg_head_reference(head: dict[str, torch.Tensor], features: list[torch.Tensor]) -> torch.Tensor:
    """mmsegmentation's SegformerHead written out (eval mode): per level a 1x1 conv without bias, BN and
    ReLU, upsampled and concatenated c1..c4; the same fusion; the classifier ``conv_seg``."""
    size = features[0].shape[-2:]
    parts = [
        F.interpolate(
            _bn_eval(F.conv2d(f, head[f"convs.{i}.conv.weight"]), head, f"convs.{i}").relu(),
            size=size,
            mode="bilinear",
            align_corners=False,
        )
        for i, f in enumerate(features)
    ]
    x = _bn_eval(F.conv2d(torch.cat(parts, 1), head["fusion_conv.conv.weight"]), head, "fusion_conv").relu()
    return F.conv2d(x, head["conv_seg.weight"], head["conv_seg.bias"])


def test_mmsegmentation_segformer_imports_with_its_head():
    sd = _fake(FORMATS["segformer_mmseg_b0"]["keys"], seed=2)
    ckpt = import_state_dict(dict(sd))
    assert ckpt.arch == "segformer_mit" and ckpt.arch_kwargs["embed"] == "conv"
    assert ckpt.arch_kwargs["aux_eps"] == 1e-6  # mmsegmentation's LayerNorms all use eps 1e-6
    model = ckpt.build().eval()
    head = {k[len("decode_head.") :]: v for k, v in sd.items() if k.startswith("decode_head.")}
    with torch.no_grad():
        features = model.backbone(torch.randn(2, 3, 64, 96))
        got = model.decode_head.forward_with_features(features)[0]
    torch.testing.assert_close(got, _mmseg_head_reference(head, features), rtol=1e-5, atol=1e-5)
    # Its encoder is the mmsegmentation MiT: the same weights imported alone give the same features.
    encoder = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    alone = import_state_dict(encoder, protocol=CITYSCAPES19).build().eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(alone.backbone(x), model.backbone(x), strict=True):
            torch.testing.assert_close(a, b)


def test_fused_and_eager_attention_agree():
    from sfseg.models.mit import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, n, 32, generator=g) for n in (96, 24, 24))
    torch.testing.assert_close(attention(q, k, v), attention(q, k, v, eager=True), rtol=1e-6, atol=1e-6)
    # Whole networks: the kernels' rounding differences add up over the blocks, and stay tiny.
    torch.manual_seed(0)
    mit = create_model("daformer_mit", 19, variant="b0").eval()
    vit = create_model("dinov2_vit", 19, variant="tiny", head_layers=2).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 96)
        for a, b in zip(mit.backbone(x), mit.backbone(x, eager=True)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        xv = torch.randn(2, 3, 56, 84)
        for a, b in zip(vit.backbone(xv, 2), vit.backbone(xv, 2, eager=True)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_lora_starts_at_the_pretrained_network_and_only_it_trains():
    torch.manual_seed(0)
    plain = create_model("dinov2_vit", 19, variant="tiny", head_layers=1).eval()
    lora = create_model("dinov2_vit", 19, variant="tiny", head_layers=1, lora_rank=4).eval()
    lora.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(lora(x), plain(x))  # B = 0: the update starts at zero
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "lora_" in n or n.startswith("decode_head.")}
    assert any("lora_a" in n for n in trainable)


def test_segformer_matches_hugging_face_transformers():
    tf = pytest.importorskip("transformers")
    cfg = tf.SegformerConfig(num_labels=19)  # MiT-B0 with a 256-wide decoder
    torch.manual_seed(0)
    theirs = tf.SegformerForSemanticSegmentation(cfg).eval()
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = import_state_dict(theirs.state_dict()).build().eval()  # LayerNorm eps matched on import
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want = theirs(pixel_values=x).logits
        got = ours(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_dinov2_matches_hugging_face_transformers():
    tf = pytest.importorskip("transformers")
    cfg = tf.Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518, patch_size=14
    )
    torch.manual_seed(0)
    theirs = tf.Dinov2Model(cfg).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lambda1" in name:
                p.uniform_(0.5, 1.5)  # LayerScale away from 1, so that a missed one shows
    ours = import_state_dict(theirs.state_dict(), protocol=CITYSCAPES19).build().eval()
    x = torch.randn(1, 3, 518, 518)  # the pre-training grid: no resampling of positions
    with torch.no_grad():
        want = theirs(pixel_values=x).last_hidden_state[:, 1:]
        got = ours.backbone(x, 1)[0].flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, kwargs",
    [
        ("daformer_mit", "{variant: tiny, head_dim: 32}"),
        ("dinov2_vit", "{variant: tiny, head_layers: 2, lora_rank: 2}"),
    ],
)
def test_modern_backbones_run_end_to_end(tiny_toycity, tmp_path, arch, kwargs):
    from sfseg.cli.main import main
    from sfseg.models import load_checkpoint

    src = tmp_path / "src.pt"
    schedule = [
        "epochs=2",
        "optim.kind=adamw",
        "optim.lr=1e-3",
        "optim.weight_decay=0.01",
        "optim.warmup_steps=2",
    ]
    assert main(["train-source", "--config", "configs/toycity/source.yaml", f"data.root={tiny_toycity}",
                 f"out={src}", f"arch={arch}", f"arch_kwargs={kwargs}", *schedule]) == 0  # fmt: skip
    for recipe in ("ld", "ldbe"):
        run = tmp_path / recipe
        assert main(["adapt", "--config", f"configs/toycity/{recipe}.yaml", f"data.root={tiny_toycity}",
                     f"checkpoint={src}", f"out={run}", "rounds=1", "epochs_per_round=1", "batch_size=4",
                     "optim.kind=adamw", "optim.lr=1e-4", "bn_affine=train"]) == 0  # fmt: skip
        summary = json.loads((run / "summary.json").read_text())
        js = tmp_path / f"{recipe}.json"
        assert (
            main(
                [
                    "eval",
                    "--checkpoint",
                    str(run / "final.pt"),
                    "--data",
                    str(tiny_toycity),
                    "--json",
                    str(js),
                ]
            )
            == 0
        )
        assert json.loads(js.read_text())["miou"] == pytest.approx(summary["final"]["miou"], abs=1e-6)
        assert load_checkpoint(run / "final.pt").arch == arch
