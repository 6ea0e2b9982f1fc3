"""The Mix Transformer (MiT) encoder of SegFormer, and the two decode heads used with it.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
NeurIPS 2021; DAFormer head: Hoyer et al., "DAFormer: Improving Network Architectures and Training
Strategies for Domain-Adaptive Semantic Segmentation", CVPR 2022. Written for sfseg from the papers'
descriptions; parameter names follow the published checkpoints (NVlabs/SegFormer, lhoyer/DAFormer) so
their files load after prefix stripping (``models/mit_import.py``).

Encoder: four stages at strides 4, 8, 16, 32. Each stage: an overlapping patch embedding (a strided
convolution, 7x7/4 then 3x3/2, and a LayerNorm), ``depth`` transformer blocks, a LayerNorm. A block is
pre-norm attention + pre-norm Mix-FFN, each residual, with stochastic depth. The attention is "efficient
self-attention": keys and values come from the tokens spatially reduced by a ``sr x sr`` strided convolution
and a LayerNorm (q: ``attn.q``, k and v: one ``attn.kv`` layer whose first C output rows are k), computed
with :func:`torch.nn.functional.scaled_dot_product_attention`. The Mix-FFN is fc1 -> 3x3 depthwise conv ->
GELU -> fc2. LayerNorm eps is 1e-6 in blocks and stage norms and 1e-5 (PyTorch's default) in the patch
embeddings and after the spatial reduction, as in the published models.

Shape:
    input (B, 3, H, W) -> four feature maps (B, C_i, H / s_i, W / s_i), s = 4, 8, 16, 32 (ceil).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sfseg.models.base import SegmentationModel
from sfseg.models.mit_heads import DAFormerHead, SegFormerHead
from sfseg.models.registry import ModelHooks
from sfseg.registry import MODELS


@dataclass(frozen=True)
class MiTVariant:
    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


MIT_VARIANTS = {
    "b0": MiTVariant((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": MiTVariant((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": MiTVariant((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": MiTVariant((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": MiTVariant((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": MiTVariant((64, 128, 320, 512), (3, 6, 40, 3)),
    # sfseg's CPU-sized configuration for ToyCity (not a published model).
    "tiny": MiTVariant((16, 32, 64, 96), (1, 1, 1, 1), heads=(1, 1, 2, 3), mlp_ratio=2),
}


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the residual branch of whole samples with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep / (1 - p)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided convolution, flattened to tokens, and a LayerNorm."""

    def __init__(self, cin: int, dim: int, kernel: int, stride: int, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientAttention(nn.Module):
    """Multi-head attention whose keys and values come from spatially reduced tokens."""

    def __init__(self, dim: int, heads: int, sr: int, eps: float = 1e-5):
        super().__init__()
        self.heads, self.sr_ratio = heads, sr
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, sr)
            self.norm = nn.LayerNorm(dim, eps=eps)

    def keys_values(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the reduced tokens: ``kv``'s first C output rows give k, the last C give v.

        Shape:
            x (B, N, C) -> k, v (B, heads, M, C / heads), M = N / sr^2.
        """
        b, _, c = x.shape
        if self.sr_ratio > 1:
            x = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).view(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, h: int, w: int, eager: bool = False) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        out = attention(q, *self.keys_values(x, h, w), eager)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eager: bool = False) -> torch.Tensor:
    """Softmax attention: PyTorch's fused kernel, or (``eager``) the plain formula, for tests.

    Shape:
        q (B, heads, N, d), k and v (B, heads, M, d) -> (B, heads, N, d).
    """
    if not eager:
        return F.scaled_dot_product_attention(q, k, v)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return scores.softmax(-1) @ v


class DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class MiTBlock(nn.Module):
    def __init__(
        self, dim: int, heads: int, sr: int, mlp_ratio: int, drop_path: float, eps: float, aux_eps: float
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientAttention(dim, heads, sr, aux_eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, h: int, w: int, eager: bool = False) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), h, w, eager), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x), h, w), self.drop_path, self.training)


class MixVisionTransformer(nn.Module):
    """The MiT encoder.

    Args:
        variant: ``b0`` ... ``b5`` (the published sizes) or ``tiny`` (sfseg's ToyCity size).
        drop_path_rate: stochastic depth, rising linearly over all blocks to this rate (DAFormer: 0.1).
        eps: the LayerNorm eps of blocks and stage norms (published models: 1e-6).
        aux_eps: the LayerNorm eps of the patch embeddings and after the spatial reduction (published
            models: 1e-5; mmsegmentation's conversion: 1e-6).
    """

    def __init__(
        self, variant: str = "b5", drop_path_rate: float = 0.1, eps: float = 1e-6, aux_eps: float = 1e-5
    ):
        super().__init__()
        if variant not in MIT_VARIANTS:
            raise ValueError(f"MiT variant must be one of {sorted(MIT_VARIANTS)}, got {variant!r}")
        cfg = MIT_VARIANTS[variant]
        self.dims = cfg.dims
        n = sum(cfg.depths)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear in depth, 0 first
        cin, start = 3, 0
        for s in range(4):
            kernel, stride = (7, 4) if s == 0 else (3, 2)
            setattr(self, f"patch_embed{s + 1}", PatchEmbed(cin, cfg.dims[s], kernel, stride, aux_eps))
            blocks = [
                MiTBlock(
                    cfg.dims[s], cfg.heads[s], cfg.sr_ratios[s], cfg.mlp_ratio, rates[start + j], eps, aux_eps
                )
                for j in range(cfg.depths[s])
            ]
            setattr(self, f"block{s + 1}", nn.ModuleList(blocks))
            setattr(self, f"norm{s + 1}", nn.LayerNorm(cfg.dims[s], eps=eps))
            cin, start = cfg.dims[s], start + cfg.depths[s]
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, eager: bool = False) -> list[torch.Tensor]:
        outs = []
        for s in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{s}")(x)
            for block in getattr(self, f"block{s}"):
                x = block(x, h, w, eager)
            x = getattr(self, f"norm{s}")(x)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            outs.append(x)
        return outs


def _init_weights(m: nn.Module) -> None:
    """Truncated-normal linear layers, He-normal convolutions (fan-out per group), unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------- heads


# ------------------------------------------------------------------------------------------ segmentors
class MiTSegmentor(SegmentationModel):
    """A MiT encoder (``backbone``) with a decode head (``decode_head``): mmseg's key layout, so DAFormer,
    HRDA, MIC and SegFormer files load after their prefixes are stripped.

    Shape:
        input (B, 3, H, W) -> logits (B, C, ceil(H / 4), ceil(W / 4)).
    """

    def __init__(self, backbone: MixVisionTransformer, decode_head: nn.Module):
        super().__init__()
        self.backbone, self.decode_head = backbone, decode_head

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode_head.forward_with_features(self.backbone(x))

    def head_parameters(self) -> list[nn.Parameter]:
        # DAFormer's recipe trains the whole decode head at 10x the encoder's learning rate.
        return list(self.decode_head.parameters())


def _variant(variant: str) -> MiTVariant:
    if variant not in MIT_VARIANTS:
        raise ValueError(f"MiT variant must be one of {sorted(MIT_VARIANTS)}, got {variant!r}")
    return MIT_VARIANTS[variant]


# Its bare state dict is DAFormer's format.
@MODELS.register(hooks=ModelHooks(classes_key="decode_head.conv_seg.weight"))
def daformer_mit(
    num_classes: int,
    variant: str = "b5",
    head_dim: int = 256,
    drop_path_rate: float = 0.1,
    eps: float = 1e-6,
    aux_eps: float = 1e-5,
) -> SegmentationModel:
    """DAFormer: a MiT encoder with the DAFormer decoder (MiT-B5: 85,155,283 parameters with 19 classes)."""
    backbone = MixVisionTransformer(variant, drop_path_rate, eps, aux_eps)
    return MiTSegmentor(backbone, DAFormerHead(_variant(variant).dims, num_classes, head_dim))


# Its bare state dict: DAFormer's SegFormer.
@MODELS.register(hooks=ModelHooks(classes_key="decode_head.linear_pred.weight"))
def segformer_mit(
    num_classes: int,
    variant: str = "b5",
    head_dim: int = 0,
    drop_path_rate: float = 0.1,
    eps: float = 1e-6,
    aux_eps: float = 1e-5,
    embed: str = "linear",
) -> SegmentationModel:
    """SegFormer: a MiT encoder with the all-MLP decoder (``head_dim`` 0: 256 for B0/B1 and tiny, 768 for
    B2-B5, as published; ``embed="conv"``: mmsegmentation's head, see :class:`SegFormerHead`)."""
    dim = head_dim or (256 if variant in ("b0", "b1", "tiny") else 768)
    backbone = MixVisionTransformer(variant, drop_path_rate, eps, aux_eps)
    return MiTSegmentor(backbone, SegFormerHead(_variant(variant).dims, num_classes, dim, embed=embed))
