"""Importing MiT-based checkpoints (registered beside ``daformer_mit`` and ``segformer_mit``).

Formats (detected by keys, never by file name; ``module.`` and ``_orig_mod.`` already stripped):

=======================  =============================================================  ==================
family                   what it is, and its keys                                       becomes
=======================  =============================================================  ==================
``daformer``             DAFormer, HRDA, MIC, ATP (mmcv): the student ``model.*`` of a  ``daformer_mit``
                         UDA file, or a plain ``backbone.*``/``decode_head.*`` file;
                         HRDA/MIC nest the head under ``decode_head.head.*`` (their
                         ``decode_head.scale_attention.*`` is not used)
``daformer_ema``         the same files' EMA teacher (``ema_model.*``)                  ``daformer_mit``
``segformer_nvlabs``     NVlabs SegFormer: head ``linear_c{1-4}``, ``linear_fuse``,     ``segformer_mit``
                         ``linear_pred`` (it concatenates c4..c1: ``linear_fuse`` is
                         permuted to sfseg's c1..c4)
``segformer_daformer``   DAFormer's SegFormer head (``linear_c.{0-3}``, c1..c4)         ``segformer_mit``
``segformer_hf``         Hugging Face SegFormer, before version 5 (``segformer.encoder.  ``segformer_mit``
                         block...attention.self.query``) and after (``segformer.stages.
                         N.blocks.M.attention.q_proj``); k and v are joined into ``kv``
``mit_imagenet``         an ImageNet MiT encoder (``patch_embed1...``, ``head.*``)      ``daformer_mit``,
                                                                                        new head
``mit_mmseg``            mmsegmentation's MiT (``layers.{s}.1.{j}.attn.attn.in_proj_       ``daformer_mit``,
                         weight``; 1x1-convolution MLPs, LayerNorm eps 1e-6)            new head
``segformer_mmseg``      mmsegmentation's SegFormer (its model zoo): that encoder under     ``segformer_mit``
                         ``backbone.`` with its head (``decode_head.convs.{0-3}``,          (``embed: conv``)
                         ``fusion_conv``, ``conv_seg``; c1..c4, each level a 1x1 conv,
                         BN and ReLU)
=======================  =============================================================  ==================

Every key that is not loaded is listed in the imported checkpoint's provenance (``unused_keys``).
"""

from __future__ import annotations

import re

import torch

from sfseg.data.classes import ClassProtocol
from sfseg.data.normalization import IMAGENET
from sfseg.models.checkpoint import Checkpoint, CheckpointFormatError
from sfseg.models.foreign import Importer, imported_class_names, load_converted
from sfseg.models.mit import MIT_VARIANTS
from sfseg.registry import IMPORTERS

FAMILIES = {
    "daformer": "DAFormer / HRDA / MIC / ATP (mmcv), the student",
    "daformer_ema": "DAFormer / HRDA / MIC / ATP (mmcv), the EMA teacher",
    "segformer_nvlabs": "NVlabs SegFormer",
    "segformer_daformer": "DAFormer's SegFormer head",
    "segformer_hf": "Hugging Face SegFormer",
    "mit_imagenet": "an ImageNet MiT encoder (NVlabs mit_b*.pth)",
    "mit_mmseg": "mmsegmentation's MiT",
    "segformer_mmseg": "mmsegmentation's SegFormer",
}


def mit_variant(encoder: dict[str, torch.Tensor], where: str) -> str:
    """The MiT variant of an encoder state dict in NVlabs names (dims and depths must match one)."""
    dims = tuple(int(encoder[f"patch_embed{s}.proj.weight"].shape[0]) for s in range(1, 5))
    depths = tuple(
        1 + max((int(m.group(1)) for k in encoder if (m := re.match(rf"block{s}\.(\d+)\.", k))), default=-1)
        for s in range(1, 5)
    )
    for name, v in MIT_VARIANTS.items():
        if v.dims == dims and v.depths == depths:
            return name
    raise CheckpointFormatError(
        f"{where}: a MiT encoder with channels {dims} and depths {depths}, which is none of sfseg's "
        f"variants {sorted(MIT_VARIANTS)}"
    )


def _split(sd: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The entries under ``prefix`` (stripped), and the keys of the rest."""
    inside = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return inside, [k for k in sd if not k.startswith(prefix)]


# ------------------------------------------------------------------------------------------- encoders
_HF_EMBED = re.compile(
    r"(?:encoder\.patch_embeddings\.(\d+)|stages\.(\d+)\.patch_embeddings)\.(proj|layer_norm)\.(\w+)$"
)
_HF_NORM = re.compile(r"(?:encoder\.layer_norm\.(\d+)|stages\.(\d+)\.layer_norm)\.(\w+)$")
_HF_BLOCK = re.compile(r"(?:encoder\.block\.(\d+)|stages\.(\d+)\.blocks)\.(\d+)\.(.+)\.(\w+)$")
_HF_BLOCK_NAMES = {
    "layer_norm_1": "norm1",
    "layernorm_before": "norm1",
    "layer_norm_2": "norm2",
    "layernorm_after": "norm2",
    "attention.self.query": "attn.q",
    "attention.q_proj": "attn.q",
    "attention.self.key": "attn.k",
    "attention.k_proj": "attn.k",
    "attention.self.value": "attn.v",
    "attention.v_proj": "attn.v",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "attention.self.sr": "attn.sr",
    "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.sequence_reduction.layer_norm": "attn.norm",
    "mlp.dense1": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "mlp.dense2": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
}


def _encoder_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face SegFormer encoder names (before version 5 and after) -> NVlabs names; its separate k and
    v layers become one ``kv`` layer (k's rows first)."""
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("segformer.")
        if m := _HF_EMBED.match(k):
            s = int(m.group(1) or m.group(2)) + 1
            out[f"patch_embed{s}.{'proj' if m.group(3) == 'proj' else 'norm'}.{m.group(4)}"] = v
        elif m := _HF_NORM.match(k):
            out[f"norm{int(m.group(1) or m.group(2)) + 1}.{m.group(3)}"] = v
        elif (m := _HF_BLOCK.match(k)) and m.group(4) in _HF_BLOCK_NAMES:
            s, j = int(m.group(1) or m.group(2)) + 1, int(m.group(3))
            out[f"block{s}.{j}.{_HF_BLOCK_NAMES[m.group(4)]}.{m.group(5)}"] = v
    for k in [k for k in out if ".attn.k." in k]:
        base, leaf = k.rsplit(".attn.k.", 1)
        out[f"{base}.attn.kv.{leaf}"] = torch.cat([out.pop(k), out.pop(f"{base}.attn.v.{leaf}")], 0)
    return out


def _encoder_mmseg(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmsegmentation MiT names -> NVlabs names (its q/k/v come stacked in ``in_proj``; its MLP layers are
    1x1 convolutions)."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.(\d)\.(.+)$", k)
        if not m:
            continue
        s, part, rest = int(m.group(1)) + 1, int(m.group(2)), m.group(3)
        if part == 0:
            out[f"patch_embed{s}.{rest.replace('projection', 'proj')}"] = v
        elif part == 2:
            out[f"norm{s}.{rest}"] = v
        else:
            j, _, tail = rest.partition(".")
            base = f"block{s}.{j}"
            if tail.startswith("attn.attn.in_proj_"):
                leaf = tail.rsplit("_", 1)[1]
                c = v.shape[0] // 3
                out[f"{base}.attn.q.{leaf}"], out[f"{base}.attn.kv.{leaf}"] = v[:c], v[c:]
            elif tail.startswith("attn.attn.out_proj."):
                out[f"{base}.attn.proj.{tail.rsplit('.', 1)[1]}"] = v
            elif tail.startswith("ffn.layers."):
                idx, leaf = tail.split(".")[2:]
                name = {"0": "mlp.fc1", "1": "mlp.dwconv.dwconv", "4": "mlp.fc2"}[idx]
                out[f"{base}.{name}.{leaf}"] = (
                    v.flatten(1) if name != "mlp.dwconv.dwconv" and v.dim() == 4 else v
                )
            else:
                out[f"{base}.{tail}"] = v
    return out


# ---------------------------------------------------------------------------------------------- heads
def _reverse_blocks(w: torch.Tensor, parts: int) -> torch.Tensor:
    """A fusion weight whose input channels hold ``parts`` blocks c4..c1, reordered to c1..c4."""
    return torch.cat(list(reversed(w.chunk(parts, dim=1))), 1)


def _head_nvlabs(head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in head.items():
        m = re.match(r"linear_c(\d)\.(.+)$", k)
        if m:
            out[f"linear_c.{int(m.group(1)) - 1}.{m.group(2)}"] = v
        elif k.startswith(("linear_fuse.", "linear_pred.")):
            out[k] = _reverse_blocks(v, 4) if k == "linear_fuse.conv.weight" else v
    return out


def _head_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    head, _ = _split(sd, "decode_head.")
    out = {}
    for k, v in head.items():
        m = re.match(r"(?:linear_c|linear_projections)\.(\d)\.proj\.(\w+)$", k)
        if m:
            out[f"linear_c.{m.group(1)}.proj.{m.group(2)}"] = v
        elif k == "linear_fuse.weight":
            out["linear_fuse.conv.weight"] = _reverse_blocks(v, 4)  # HF concatenates c4..c1 too
        elif k.startswith("batch_norm."):
            out[f"linear_fuse.bn.{k.split('.', 1)[1]}"] = v
        elif k.startswith("classifier."):
            out[f"linear_pred.{k.split('.', 1)[1]}"] = v
    return out


_MMSEG_HEAD = {"convs": "linear_c", "fusion_conv": "linear_fuse", "conv_seg": "linear_pred"}


def _head_mmseg(head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmsegmentation's SegFormer head -> sfseg's ``SegFormerHead(embed="conv")`` (same order, c1..c4)."""
    out = {}
    for k, v in head.items():
        first, _, rest = k.partition(".")
        if first in _MMSEG_HEAD:
            out[f"{_MMSEG_HEAD[first]}.{rest}"] = v
    return out


# -------------------------------------------------------------------------------------------- import
def detect(sd: dict[str, torch.Tensor]) -> str | None:
    keys = set(sd)
    if any(k.startswith(("segformer.encoder.", "segformer.stages.")) for k in keys):
        return "segformer_hf"
    if any(re.match(r"(backbone\.)?layers\.0\.0\.projection\.weight$", k) for k in keys):
        if {"decode_head.convs.0.conv.weight", "decode_head.fusion_conv.conv.weight"} <= keys:
            return "segformer_mmseg"
        return "mit_mmseg"
    if (
        "model.backbone.patch_embed1.proj.weight" in keys
        or "ema_model.backbone.patch_embed1.proj.weight" in keys
    ):
        return "daformer"
    if "backbone.patch_embed1.proj.weight" in keys:
        if any(k.startswith(("decode_head.fuse_layer.", "decode_head.head.fuse_layer.")) for k in keys):
            return "daformer"
        if "decode_head.linear_c1.proj.weight" in keys:
            return "segformer_nvlabs"
        if "decode_head.linear_c.0.proj.weight" in keys:
            return "segformer_daformer"
        return None
    if "patch_embed1.proj.weight" in keys and "block1.0.attn.q.weight" in keys:
        return "mit_imagenet"
    return None


def _daformer(sd: dict, family: str, where: str) -> tuple:
    """DAFormer / HRDA / MIC / ATP files (the student ``model.*`` or the EMA teacher ``ema_model.*``)."""
    prefix = {"daformer": "model.", "daformer_ema": "ema_model."}[family]
    if not any(k.startswith(prefix) for k in sd):
        if family == "daformer_ema":
            raise CheckpointFormatError(f"{where}: no EMA teacher (ema_model.*) in this file")
        prefix = ""
    model, unused = _split(sd, prefix) if prefix else (sd, [])
    encoder, rest = _split(model, "backbone.")
    head, others = _split({k: model[k] for k in rest}, "decode_head.")
    unused += [prefix + k for k in others]
    if any(k.startswith("head.") for k in head):  # HRDA / MIC: the DAFormer head under .head
        unused += [f"{prefix}decode_head.{k}" for k in head if not k.startswith("head.")]
        head = {k[5:]: v for k, v in head.items() if k.startswith("head.")}
    if "fuse_layer.aspp_modules.1.depthwise_conv.conv.weight" not in head:
        raise CheckpointFormatError(
            f"{where}: a DAFormer file whose decoder is not DAFormer's separable-ASPP fusion (the "
            "published DAFormer head); only that decoder is supported"
        )
    extra = {"head_dim": int(head["embed_layers.0.proj.weight"].shape[0])}
    return encoder, head, unused, "daformer_mit", "conv_seg.weight", extra


def _segformer(sd: dict, family: str, where: str) -> tuple:
    """NVlabs SegFormer files, and DAFormer's SegFormer head."""
    encoder, rest = _split(sd, "backbone.")
    head, others = _split({k: sd[k] for k in rest}, "decode_head.")
    unused = others + [f"decode_head.{k}" for k in head if k.startswith("conv_seg.")]  # unused by this head
    if family == "segformer_nvlabs":
        head = _head_nvlabs(head)
    else:
        head = {k: v for k, v in head.items() if not k.startswith("conv_seg.")}
    extra = {"head_dim": int(head["linear_c.0.proj.weight"].shape[0])}
    return encoder, head, unused, "segformer_mit", "linear_pred.weight", extra


def _segformer_hf(sd: dict, family: str, where: str) -> tuple:
    """Hugging Face SegFormer (its LayerNorms keep PyTorch's default eps 1e-5)."""
    encoder = _encoder_hf({k: v for k, v in sd.items() if not k.startswith("decode_head.")})
    head = _head_hf(sd)
    unused = [k for k in sd if k.startswith(("classifier.", "decode_head.")) and not _hf_used(k)]
    extra = {"aux_eps": 1e-5, "eps": 1e-5}
    if not head:
        return encoder, head, unused, "segformer_mit", "", extra
    extra["head_dim"] = int(head["linear_c.0.proj.weight"].shape[0])
    return encoder, head, unused, "segformer_mit", "linear_pred.weight", extra


def _mit_imagenet(sd: dict, family: str, where: str) -> tuple:
    """An ImageNet MiT encoder (no segmentation head)."""
    encoder = {k: v for k, v in sd.items() if not k.startswith("head.")}
    return encoder, {}, [k for k in sd if k.startswith("head.")], "daformer_mit", "", {}


def _mmseg(sd: dict, family: str, where: str) -> tuple:
    """mmsegmentation's converted MiT, with its SegFormer head for ``segformer_mmseg``."""
    inside = {k.removeprefix("backbone."): v for k, v in sd.items()}
    encoder = _encoder_mmseg(inside)
    unused = [k for k in sd if not k.removeprefix("backbone.").startswith("layers.")]
    extra = {"aux_eps": 1e-6}  # mmsegmentation builds every MiT LayerNorm with eps 1e-6
    if family != "segformer_mmseg":
        return encoder, {}, unused, "daformer_mit", "", extra
    head = _head_mmseg(_split(sd, "decode_head.")[0])
    extra["head_dim"], extra["embed"] = int(head["linear_fuse.conv.weight"].shape[0]), "conv"
    loaded = tuple(f"decode_head.{n}." for n in _MMSEG_HEAD)
    unused = [k for k in unused if not k.startswith(loaded)]
    return encoder, head, unused, "segformer_mit", "linear_pred.weight", extra


_SPLITS = {
    "daformer": _daformer,
    "daformer_ema": _daformer,
    "segformer_nvlabs": _segformer,
    "segformer_daformer": _segformer,
    "segformer_hf": _segformer_hf,
    "mit_imagenet": _mit_imagenet,
    "mit_mmseg": _mmseg,
    "segformer_mmseg": _mmseg,
}


def convert(
    sd: dict[str, torch.Tensor], family: str, protocol: ClassProtocol | None, where: str
) -> Checkpoint:
    """Convert a cleaned state dict of ``family`` into an sfseg :class:`Checkpoint`: the family's split into
    encoder, head and unused keys, then one strict load."""
    if family not in _SPLITS:
        raise CheckpointFormatError(f"{where}: not a MiT family: {family!r}")
    encoder, head, unused, arch, head_key, extra = _SPLITS[family](sd, family, where)
    variant = mit_variant(encoder, where)
    weights = {f"backbone.{k}": v for k, v in encoder.items()} | {
        f"decode_head.{k}": v for k, v in head.items()
    }
    names = imported_class_names(head[head_key] if head_key else None, protocol, FAMILIES[family], where)
    new_head = "decode_head." if not head_key else ""
    return load_converted(
        arch,
        {"variant": variant, **extra},
        weights,
        names,
        IMAGENET,
        where,
        family,
        FAMILIES[family],
        unused,
        new_head=new_head,
    )


def _hf_used(key: str) -> bool:
    return bool(
        re.match(r"decode_head\.(linear_c|linear_projections|linear_fuse|batch_norm|classifier)", key)
    )


IMPORTERS.register("mit", Importer(families=FAMILIES, detect=detect, convert=convert))
