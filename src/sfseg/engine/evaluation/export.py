"""Export for deployment: an ONNX model that takes a normalised image and returns logits and labels, with
a JSON sidecar that says how to feed it (normalisation, input size, classes and their colours).

The exported graph is the checkpoint's network followed by the bilinear upsampling of its logits to the
input's size (``align_corners`` as the checkpoint was scored) and an argmax; height and width are dynamic.
To reproduce ``sfseg predict``: resize the image to ``input_size`` when the sidecar gives one (bicubic),
normalise it as the sidecar says, run the model, and resize the logits to the image's own size. The export
is checked before it is kept: ONNX Runtime's logits against PyTorch's on a sample input (both figures go
into the sidecar). Every registered architecture exports at opset 18 with PyTorch's ``dynamo`` exporter
(tests: ``deeplab_small`` and ``daformer_mit`` on ToyCity images; by hand: ``deeplabv2_r101``,
``segformer_mit``; ``dinov2_vit`` with H and W fixed at its input size).
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sfseg.errors import ConfigError
from sfseg.fileio import atomic_write_bytes, atomic_write_text
from sfseg.models.checkpoint import Checkpoint

FORMATS = ("onnx",)
OPSET = 18
SAMPLE_HW = (128, 256)
"""The sample input's (H, W) when the checkpoint has no input size (any size works: H and W are dynamic)."""


class Deployable(nn.Module):
    """The network as exported: normalised images -> (logits at the input's size, labels)."""

    def __init__(self, model: nn.Module, align_corners: bool):
        super().__init__()
        self.model, self.align_corners = model, align_corners

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Always resized (bilinear to the same size is the identity): no shape branch in the graph.
        logits = F.interpolate(
            self.model(image), size=image.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )
        return logits, logits.argmax(1)


def _onnx_modules():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"ONNX export needs the optional packages onnx, onnxscript and onnxruntime ({e.name} missing): "
            "pip install 'sfseg[export]'"
        ) from None
    return onnxruntime


def sidecar(ckpt: Checkpoint, out: Path, opset: int, check: dict) -> dict:
    """What a deployment needs to feed the exported model and read its outputs."""
    size = list(ckpt.inference.input_size) or None
    norm = ckpt.normalization.to_dict()
    return {
        "format": "onnx",
        "opset": opset,
        "model": out.name,
        "input": {
            "name": "image",
            "shape": "(N, 3, H, W) float32, H and W dynamic",
            "normalization": norm,
            "formula": "x = (image[order] * scale - mean) / std, scale = 1/255 for value_range 1",
            "input_size": size,
            "resize": "bicubic to input_size (W, H) first" if size else "none: the image's own size",
        },
        "outputs": {
            "logits": "(N, C, H, W) float32 at the input's size",
            "labels": "(N, H, W) int64, the argmax over classes",
        },
        "align_corners": ckpt.inference.align_corners,
        "classes": list(ckpt.class_names),
        "colors": [list(c) for c in ckpt.protocol().colors],
        "arch": ckpt.arch,
        "check": check,
    }


def export_model(ckpt: Checkpoint, out: str | Path, fmt: str = "onnx", opset: int = OPSET) -> dict:
    """Write ``ckpt`` as ``fmt`` to ``out`` and its sidecar to ``<out>.json``; return the sidecar.

    Height and width are dynamic where the network's graph allows it (the CNNs, MiT); otherwise (the ViT,
    whose position embeddings are resized in Python) they are fixed at the checkpoint's input size, which
    is the size ``sfseg predict`` feeds it anyway; the sidecar says which.

    Raises:
        ConfigError: an unknown format, or the ONNX packages are missing.
        RuntimeError: the exported model disagrees with PyTorch (nothing is written then).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; formats: {list(FORMATS)}")
    ort = _onnx_modules()
    out = Path(out)
    model = Deployable(ckpt.build().eval(), ckpt.inference.align_corners).eval()
    w, h = ckpt.inference.input_size or SAMPLE_HW[::-1]
    # Two images: export fixes a dimension whose sample size is 1 (the batch would be frozen at 1).
    sample = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        # A graph may export with dynamic H and W and still have a size baked in (a reshape to a token
        # count): it is kept dynamic only if it also reproduces PyTorch at a second, different size.
        other = torch.randn(1, 3, h + 20, w + 36, generator=torch.Generator().manual_seed(1))
        try:
            _to_onnx(model, sample, opset, path, dynamic_hw=True)
            check = check_export(model, ort.InferenceSession(str(path)), sample, other)
            shape = "(N, 3, H, W) float32, H and W dynamic"
        except Exception as e:  # torch.export's and onnxruntime's errors have no common base class
            if not ckpt.inference.input_size:
                raise RuntimeError(f"{ckpt.arch} does not export with dynamic H and W: {str(e)[:400]}") from e
            _to_onnx(model, sample, opset, path, dynamic_hw=False)
            check = check_export(model, ort.InferenceSession(str(path)), sample)
            shape = f"(N, 3, {h}, {w}) float32: H and W fixed at input_size"
        data = path.read_bytes()
    if check["max_abs_logit_diff"] > 1e-3 or check["argmax_agreement"] < 0.999:
        raise RuntimeError(f"the exported model disagrees with PyTorch ({check}); nothing was written")
    atomic_write_bytes(out, lambda p: p.write_bytes(data))
    meta = sidecar(ckpt, out, opset, check)
    meta["input"]["shape"] = shape
    text = json.dumps(meta, indent=1)
    atomic_write_text(Path(f"{out}.json"), text)
    return json.loads(text)


def _to_onnx(model: nn.Module, sample: torch.Tensor, opset: int, path: Path, dynamic_hw: bool) -> None:
    dims = {0: torch.export.Dim("batch", max=1024)}
    if dynamic_hw:
        dims |= {
            2: torch.export.Dim("height", min=16, max=8192),
            3: torch.export.Dim("width", min=16, max=8192),
        }
    quiet = logging.getLogger("torch.onnx")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (sample,), input_names=["image"], output_names=["logits", "labels"],
                opset_version=opset, dynamo=True, dynamic_shapes={"image": dims}, verbose=False,
            )  # fmt: skip
    finally:
        quiet.level = level
    program.save(str(path))


@torch.no_grad()
def check_export(model: nn.Module, session, *samples: torch.Tensor) -> dict:
    """ONNX Runtime against PyTorch on ``samples``: the largest logit difference and the lowest argmax
    agreement over them."""
    diff, agreement = 0.0, 1.0
    for sample in samples:
        ref = model(sample)[0].numpy()
        got = session.run(["logits"], {"image": sample.numpy()})[0]
        if got.shape != ref.shape:
            raise RuntimeError(
                f"ONNX logits {got.shape} for an input {tuple(sample.shape)}, PyTorch's {ref.shape}"
            )
        diff = max(diff, float(np.abs(got - ref).max()))
        agreement = min(agreement, float((got.argmax(1) == ref.argmax(1)).mean()))
    return {
        "samples": [list(x.shape) for x in samples],
        "max_abs_logit_diff": diff,
        "argmax_agreement": agreement,
    }
