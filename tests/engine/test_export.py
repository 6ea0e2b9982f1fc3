"""ONNX export: ONNX Runtime's logits against PyTorch's on ToyCity images, for the CNN and a tiny MiT."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sfseg.api import DEMO_CHECKPOINT, export_model
from sfseg.data.normalization import Normalization
from sfseg.data.toycity import ToyCitySpec, generate
from sfseg.errors import ConfigError
from sfseg.models import load_checkpoint

ort = pytest.importorskip("onnxruntime", reason="the export extra: pip install 'sfseg[export]'")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> torch.Tensor:
    """Eight ToyCity target frames at the demo's size, uint8 (8, 3, 128, 256)."""
    root = tmp_path_factory.mktemp("frames")
    spec = replace(
        ToyCitySpec(), height=128, width=256, source_train=1, source_val=1, target_train=4, target_val=4
    )
    generate(root, spec, progress=False)
    paths = sorted((root / "target/images").rglob("*.png"))
    return torch.stack(
        [torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()) for p in paths]
    ).permute(0, 3, 1, 2)


def _compare(checkpoint, frames, tmp_path) -> dict:
    out = tmp_path / "model.onnx"
    meta = export_model(checkpoint, out)
    assert json.loads((tmp_path / "model.onnx.json").read_text()) == meta
    ckpt = load_checkpoint(checkpoint)
    x = ckpt.normalization(frames)  # uint8 in, normalised float out
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(
            ckpt.build().eval()(x), size=x.shape[-2:], mode="bilinear", align_corners=meta["align_corners"]
        ).numpy()
    session = ort.InferenceSession(str(out))
    logits, labels = session.run(["logits", "labels"], {"image": x.numpy()})
    assert logits.shape == ref.shape and labels.shape == (x.shape[0], *x.shape[-2:])
    np.testing.assert_array_equal(labels, logits.argmax(1))
    diff = float(np.abs(logits - ref).max())
    agreement = float((labels == ref.argmax(1)).mean())
    # Any size in: H and W are dynamic.
    (small,) = session.run(["labels"], {"image": x[:1, :, :64, :96].numpy()})
    assert small.shape == (1, 64, 96)
    return {"diff": diff, "agreement": agreement, "meta": meta}


def test_cnn_exports_to_onnx_with_pytorchs_logits(frames, tmp_path):
    got = _compare(DEMO_CHECKPOINT, frames, tmp_path)
    assert got["diff"] <= 1e-4 and got["agreement"] >= 0.9999, got
    meta = got["meta"]
    assert meta["opset"] == 18 and meta["arch"] == "deeplab_small"
    assert meta["classes"] == list(load_checkpoint(DEMO_CHECKPOINT).class_names)
    norm = load_checkpoint(DEMO_CHECKPOINT).normalization
    assert Normalization.from_dict(meta["input"]["normalization"]) == norm


def test_tiny_mit_exports_to_onnx_with_pytorchs_logits(tiny_mit, frames, tmp_path):
    got = _compare(tiny_mit, frames, tmp_path)
    assert got["diff"] <= 1e-4 and got["agreement"] >= 0.9999, got
    assert got["meta"]["arch"] == "daformer_mit"


def test_export_refuses_an_unknown_format_and_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_model(DEMO_CHECKPOINT, tmp_path / "m.tflite", format="tflite")
    assert list(tmp_path.iterdir()) == []


def test_vit_exports_at_its_input_size(frames, tmp_path):
    """DINOv2's graph bakes its token count in at export: it is exported at its checkpoint's input size
    (the size ``sfseg predict`` feeds it), and the sidecar says so."""
    from sfseg.models import Checkpoint, create_model
    from sfseg.models.checkpoint import InferenceSettings

    torch.manual_seed(0)
    names = load_checkpoint(DEMO_CHECKPOINT).class_names
    net = create_model("dinov2_vit", len(names), variant="tiny", head_layers=2).eval()
    ckpt = Checkpoint.of(
        net,
        names,
        Normalization(),
        InferenceSettings(input_size=(112, 56)),
    )
    ckpt.save(tmp_path / "vit.pt")
    meta = export_model(tmp_path / "vit.pt", tmp_path / "vit.onnx")
    x = Normalization()(
        torch.nn.functional.interpolate(frames.float(), size=(56, 112)).round().to(torch.uint8)
    )
    (logits,) = ort.InferenceSession(str(tmp_path / "vit.onnx")).run(["logits"], {"image": x.numpy()})
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(net(x), size=(56, 112), mode="bilinear").numpy()
    assert np.abs(logits - ref).max() <= 1e-4
    assert meta["input"]["shape"].startswith("(N, 3, 56, 112)"), meta["input"]
