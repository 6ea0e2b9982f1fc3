"""The two decode heads used with the MiT encoder (:mod:`.mit`): DAFormer's (each level embedded by a
linear layer, upsampled to stride 4, concatenated and fused by a separable-convolution ASPP) and
SegFormer's (embedded, upsampled, concatenated and fused by a 1x1 convolution).

Hoyer et al., "DAFormer: Improving Network Architectures and Training Strategies for Domain-Adaptive
Semantic Segmentation", CVPR 2022; Xie et al., "SegFormer", NeurIPS 2021. Parameter names follow the
published checkpoints, so their files load after prefix stripping (``models/mit_import.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Module):
    """A convolution without bias, BatchNorm and ReLU (mmcv's ``ConvModule`` names: ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__()
        pad = dilation * (kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """A depthwise separable 3x3 convolution: depthwise (with its BN and ReLU), then pointwise."""

    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__()
        self.depthwise_conv = ConvBNReLU(cin, cin, 3, dilation, groups=cin)
        self.pointwise_conv = ConvBNReLU(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class Embed(nn.Module):
    """A per-token linear embedding of a feature map (``proj``)."""

    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(cin, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)


def _embed_all(embeds: nn.ModuleList, features: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each level embedded and brought to the first level's (stride 4) size, bilinearly."""
    # The first level is at that size by definition; the others never are (strides 8, 16, 32), so no test of
    # their sizes is needed, which keeps the graph free of shape branches (ONNX export, dynamic H and W).
    size = features[0].shape[-2:]
    first, *rest = (embed(f) for embed, f in zip(embeds, features))
    return [first, *(F.interpolate(e, size=size, mode="bilinear", align_corners=False) for e in rest)]


class ASPPFusion(nn.Module):
    """DAFormer's context-aware fusion: parallel separable convolutions with dilations 1 (a 1x1), 6, 12, 18
    over the concatenated embeddings, concatenated again, and a 3x3 bottleneck (each with BN and ReLU)."""

    def __init__(self, cin: int, channels: int, dilations: tuple[int, ...] = (1, 6, 12, 18)):
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvBNReLU(cin, channels, 1) if d == 1 else SeparableConvBNReLU(cin, channels, d)
            for d in dilations
        )
        self.bottleneck = ConvBNReLU(len(dilations) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([m(x) for m in self.aspp_modules], 1))


class DAFormerHead(nn.Module):
    """The DAFormer decoder: per-level linear embeddings (``embed_layers``), upsampled to stride 4 and
    concatenated (c1..c4), the ASPP fusion (``fuse_layer``), dropout and a 1x1 classifier (``conv_seg``).

    Shape:
        four maps -> logits (B, C, H / 4, W / 4); :meth:`forward_with_features` also returns the fused
        features (the classifier's input).
    """

    def __init__(self, in_dims: tuple[int, ...], num_classes: int, dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.embed_layers = nn.ModuleList(Embed(c, dim) for c in in_dims)
        self.fuse_layer = ASPPFusion(len(in_dims) * dim, dim)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(dim, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward_with_features(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.fuse_layer(torch.cat(_embed_all(self.embed_layers, features), 1))
        return self.conv_seg(self.dropout(fused)), fused

    def classifier(self) -> list[nn.Parameter]:
        return list(self.conv_seg.parameters())


class SegFormerHead(nn.Module):
    """The SegFormer all-MLP decoder: per-level linear embeddings (``linear_c``), upsampled to stride 4 and
    concatenated in the order c1..c4 (DAFormer's; NVlabs' own code concatenates c4..c1, which the importer
    turns into this order by permuting ``linear_fuse``'s input blocks), a 1x1 fusion with BN and ReLU
    (``linear_fuse``), dropout and a 1x1 classifier (``linear_pred``).

    ``embed="conv"`` is mmsegmentation's version of the head (its model zoo's SegFormer files): each level
    is embedded by a 1x1 convolution without bias, BN and ReLU instead of a linear layer."""

    def __init__(
        self,
        in_dims: tuple[int, ...],
        num_classes: int,
        dim: int = 256,
        dropout: float = 0.1,
        embed: str = "linear",
    ):
        super().__init__()
        if embed not in ("linear", "conv"):
            raise ValueError(f"SegFormer head embed must be 'linear' or 'conv', got {embed!r}")
        self.linear_c = nn.ModuleList(
            Embed(c, dim) if embed == "linear" else ConvBNReLU(c, dim) for c in in_dims
        )
        self.linear_fuse = ConvBNReLU(len(in_dims) * dim, dim, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(dim, num_classes, 1)

    def forward_with_features(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.linear_fuse(torch.cat(_embed_all(self.linear_c, features), 1))
        return self.linear_pred(self.dropout(fused)), fused
