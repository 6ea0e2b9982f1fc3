"""Importing DINOv2 backbones (registered beside ``dinov2_vit``): every format holds an encoder only, so the
imported model gets a new linear head (the classes must be named).

================  ====================================================================================
family            keys (``module.``/``_orig_mod.`` stripped)
================  ====================================================================================
``dinov2``        facebookresearch/dinov2: ``cls_token``, ``pos_embed``, ``mask_token``, optional
                  ``register_tokens``, ``blocks.{i}.*`` (or chunked ``blocks.{c}.{i}.*``), ``norm``
``dinov2_timm``   timm's DINOv2 ViTs: no ``mask_token``; with registers, ``reg_token`` and a position
                  table without the class slot (its class token already holds that position); ViT-g's
                  SwiGLU as ``mlp.fc1``/``mlp.fc2``
``dinov2_hf``     Hugging Face ``Dinov2Model`` (``embeddings.*``, ``encoder.layer.{i}.*``), q, k and v
                  joined into ``qkv``
================  ====================================================================================

Position embeddings are resampled as each source does for other input sizes: DINOv2 with a 0.1 offset
(with antialiasing and no offset for its register models), timm and Hugging Face to the target size.
"""

from __future__ import annotations

import re

import torch

from sfseg.data.classes import ClassProtocol
from sfseg.data.normalization import IMAGENET
from sfseg.models.checkpoint import Checkpoint, CheckpointFormatError
from sfseg.models.foreign import Importer, class_names_for, load_converted
from sfseg.models.vit import VIT_VARIANTS
from sfseg.registry import IMPORTERS

FAMILIES = {
    "dinov2": "a DINOv2 backbone (facebookresearch/dinov2)",
    "dinov2_timm": "a timm DINOv2 ViT",
    "dinov2_hf": "a Hugging Face DINOv2 model",
}

_HF = {
    "norm1": "norm1", "norm2": "norm2",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "mlp.weights_in": "mlp.w12", "mlp.weights_out": "mlp.w3",
}  # fmt: skip
_HF_EMBEDDINGS = {
    "embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed", "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
}  # fmt: skip
_HF_QKV = {"attention.attention.query": "q", "attention.q_proj": "q", "attention.attention.key": "k",
           "attention.k_proj": "k", "attention.attention.value": "v", "attention.v_proj": "v"}  # fmt: skip


def detect(sd: dict[str, torch.Tensor]) -> str | None:
    keys = set(sd)
    if "embeddings.patch_embeddings.projection.weight" in keys:
        return "dinov2_hf"
    if (
        "patch_embed.proj.weight" in keys
        and "cls_token" in keys
        and any(k.startswith("blocks.") for k in keys)
    ):
        return "dinov2" if "mask_token" in keys else "dinov2_timm"
    return None


def _from_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k == "reg_token":
            out["register_tokens"] = v
        elif re.match(r"blocks\.\d+\.mlp\.fc[12]\.", k) and _swiglu(sd):
            out[k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")] = v
        else:
            out[k] = v
    if "reg_token" in sd:  # timm keeps no position for the prefix tokens: give the class token a zero one
        pos = sd["pos_embed"]
        out["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], 1)
    return out


def _swiglu(sd: dict[str, torch.Tensor]) -> bool:
    """ViT-g's packed SwiGLU: fc1 has twice the rows fc2 has columns."""
    w1, w2 = sd.get("blocks.0.mlp.fc1.weight"), sd.get("blocks.0.mlp.fc2.weight")
    return w1 is not None and w2 is not None and w1.shape[0] == 2 * w2.shape[1]


def _from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, qkv = {}, {}
    for k, v in sd.items():
        k = k.removeprefix("dinov2.")
        if k.startswith("embeddings."):
            name = _HF_EMBEDDINGS.get(k)  # fmt: skip
            if name:
                out[name] = v.reshape(1, -1) if name == "mask_token" else v
        elif m := re.match(r"encoder\.layer\.(\d+)\.(.+)\.(\w+)$", k):
            i, module, leaf = m.groups()
            if f"{module}.{leaf}" in _HF:  # LayerScale's lambda1 has no module/leaf split of its own
                out[f"blocks.{i}.{_HF[f'{module}.{leaf}']}"] = v
            elif module in _HF:
                out[f"blocks.{i}.{_HF[module]}.{leaf}"] = v
            elif module in _HF_QKV:
                qkv[(i, leaf, _HF_QKV[module])] = v
        elif k.startswith("layernorm."):
            out[f"norm.{k.split('.', 1)[1]}"] = v
    for i, leaf in {(i, leaf) for i, leaf, _ in qkv}:
        out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([qkv[(i, leaf, p)] for p in "qkv"], 0)
    return out


def convert(
    sd: dict[str, torch.Tensor], family: str, protocol: ClassProtocol | None, where: str
) -> Checkpoint:
    """Convert a cleaned DINOv2 state dict of ``family`` into an sfseg checkpoint with a new head."""
    ignored = [k for k in sd if k.startswith(("head.", "fc_norm.", "pooler."))]  # classifier parts
    sd = {k: v for k, v in sd.items() if k not in ignored}
    if family == "dinov2":
        backbone = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}  # chunked
    elif family == "dinov2_timm":
        backbone = _from_timm(sd)
    elif family == "dinov2_hf":
        backbone = _from_hf(sd)
    else:
        raise CheckpointFormatError(f"{where}: not a DINOv2 family: {family!r}")
    dim = int(backbone["cls_token"].shape[-1])
    depth = 1 + max(int(m.group(1)) for k in backbone if (m := re.match(r"blocks\.(\d+)\.", k)))
    variant = next((n for n, v in VIT_VARIANTS.items() if v.dim == dim and v.depth == depth), None)
    if variant is None:
        raise CheckpointFormatError(
            f"{where}: a ViT of width {dim} and depth {depth}: none of {sorted(VIT_VARIANTS)}"
        )
    registers = int(backbone["register_tokens"].shape[1]) if "register_tokens" in backbone else 0
    if "mask_token" not in backbone:
        backbone["mask_token"] = torch.zeros(1, dim)  # unused by segmentation; timm files drop it
    if family == "dinov2":
        resample = {"interpolate_offset": 0.0 if registers else 0.1, "interpolate_antialias": bool(registers)}
    elif family == "dinov2_timm":
        resample = {"interpolate_offset": 0.0, "interpolate_antialias": True}
    else:
        resample = {"interpolate_offset": 0.0, "interpolate_antialias": False}
    if protocol is None:
        raise CheckpointFormatError(
            f"{where}: {FAMILIES[family]} has no segmentation head; say which classes"
        )
    return load_converted(
        "dinov2_vit",
        {"variant": variant, "registers": registers, **resample},
        {f"backbone.{k}": v for k, v in backbone.items()},
        class_names_for(protocol.num_classes, protocol, where),
        IMAGENET,
        where,
        family,
        FAMILIES[family],
        ignored,
        new_head="decode_head.",
    )


IMPORTERS.register("dinov2", Importer(families=FAMILIES, detect=detect, convert=convert))
