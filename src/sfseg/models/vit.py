"""DINOv2 vision transformers (ViT-S/B/L/g, patch 14, optional register tokens) with a light segmentation
head and an optional LoRA on the attention.

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", TMLR 2024; registers:
Darcet et al., "Vision Transformers Need Registers", ICLR 2024; LoRA: Hu et al., ICLR 2022. Written for
sfseg from the papers' descriptions; parameter names follow facebookresearch/dinov2's checkpoints (under
``backbone.``), so its files and timm's load after conversion (``models/vit_import.py``).

Backbone: a 14x14/14 patch embedding, a class token, optional register tokens, learnt absolute position
embeddings for a 37x37 grid (518 px) resampled bicubically to the input's grid, ``depth`` pre-norm blocks
(attention with one ``qkv`` layer, LayerScale ``ls1``/``ls2``, an MLP or, for ViT-g, a SwiGLU ``w12``/``w3``)
and a final LayerNorm (eps 1e-6). Attention uses :func:`torch.nn.functional.scaled_dot_product_attention`.

Head (sfseg's, after DINOv2's linear segmentation probe): the patch tokens of the last ``head_layers``
blocks, each through the final LayerNorm, concatenated, BatchNorm, dropout and a 1x1 convolution; logits are
upsampled to the (padded) input size and cropped to it (inputs are padded to a multiple of 14).

LoRA (``lora_rank`` > 0): the backbone is frozen but for a low-rank update ``B A`` of each ``qkv`` layer
(``A`` random, ``B`` zero, so training starts at the pre-trained network), scaled by ``lora_alpha / rank``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sfseg.models.base import SegmentationModel
from sfseg.models.registry import ModelHooks
from sfseg.registry import MODELS


@dataclass(frozen=True)
class ViTVariant:
    dim: int
    depth: int
    heads: int
    swiglu: bool = False


VIT_VARIANTS = {
    "s": ViTVariant(384, 12, 6),
    "b": ViTVariant(768, 12, 12),
    "l": ViTVariant(1024, 24, 16),
    "g": ViTVariant(1536, 40, 24, swiglu=True),
    # sfseg's CPU-sized configuration for tests and ToyCity (not a published model).
    "tiny": ViTVariant(64, 2, 2),
}
PATCH = 14
GRID = 37  # the pre-training position grid: 518 px / 14


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, lora_rank: int = 0, lora_alpha: float = 1.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.lora_rank = lora_rank
        if lora_rank:
            self.lora_a = nn.Parameter(torch.empty(lora_rank, dim))
            self.lora_b = nn.Parameter(torch.zeros(3 * dim, lora_rank))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.lora_scale = lora_alpha / lora_rank

    def forward(self, x: torch.Tensor, eager: bool = False) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x)
        if self.lora_rank:
            qkv = qkv + (x @ self.lora_a.T @ self.lora_b.T) * self.lora_scale
        q, k, v = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if eager:
            out = ((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])).softmax(-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """ViT-g's feed-forward: ``w3(silu(a) * b)`` with ``a, b`` the halves of ``w12(x)``; the hidden size is
    2/3 of 4 x dim, rounded up to a multiple of 8 (DINOv2's fused SwiGLU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Block(nn.Module):
    def __init__(self, cfg: ViTVariant, lora_rank: int, lora_alpha: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.attn = Attention(cfg.dim, cfg.heads, lora_rank, lora_alpha)
        self.ls1 = LayerScale(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = (SwiGLU if cfg.swiglu else Mlp)(cfg.dim, 4 * cfg.dim)
        self.ls2 = LayerScale(cfg.dim)

    def forward(self, x: torch.Tensor, eager: bool = False) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), eager))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH, PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """The DINOv2 backbone.

    Args:
        variant: ``s``, ``b``, ``l``, ``g`` (published) or ``tiny``.
        registers: register tokens (DINOv2 "reg" models: 4).
        interpolate_offset, interpolate_antialias: how the position grid is resampled to other inputs (the
            original models: offset 0.1, no antialiasing; the register models: 0.0 with antialiasing).
        lora_rank, lora_alpha: see the module docstring.
    """

    def __init__(
        self,
        variant: str = "b",
        registers: int = 0,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
        lora_rank: int = 0,
        lora_alpha: float = 1.0,
    ):
        super().__init__()
        if variant not in VIT_VARIANTS:
            raise ValueError(f"ViT variant must be one of {sorted(VIT_VARIANTS)}, got {variant!r}")
        cfg = VIT_VARIANTS[variant]
        self.dim, self.registers = cfg.dim, registers
        self.interpolate_offset, self.interpolate_antialias = interpolate_offset, interpolate_antialias
        self.patch_embed = PatchEmbed(cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + GRID * GRID, cfg.dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, registers, cfg.dim)) if registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.dim))  # unused in segmentation; kept for the format
        self.blocks = nn.ModuleList(Block(cfg, lora_rank, lora_alpha) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def position(self, rows: int, cols: int) -> torch.Tensor:
        """Position embeddings (class first) for a ``rows`` x ``cols`` patch grid."""
        if rows == GRID and cols == GRID:
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:].float()
        grid = grid.reshape(1, GRID, GRID, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            # DINOv2's resampling: a scale factor with a small offset (kept for its pre-trained weights).
            scale = ((rows + self.interpolate_offset) / GRID, (cols + self.interpolate_offset) / GRID)
            grid = F.interpolate(
                grid, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias
            )
        else:
            grid = F.interpolate(
                grid, size=(rows, cols), mode="bicubic", antialias=self.interpolate_antialias
            )
        return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1).to(cls.dtype)], 1)

    def forward(self, x: torch.Tensor, layers: int = 1, eager: bool = False) -> list[torch.Tensor]:
        """The patch tokens of the last ``layers`` blocks, each through the final norm, as maps.

        Shape:
            x (B, 3, H, W) with H, W multiples of 14 -> ``layers`` maps (B, D, H / 14, W / 14).
        """
        b, _, h, w = x.shape
        rows, cols = h // PATCH, w // PATCH
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], 1) + self.position(rows, cols)
        if self.register_tokens is not None:
            t = torch.cat([t[:, :1], self.register_tokens.expand(b, -1, -1), t[:, 1:]], 1)
        outs = []
        for i, block in enumerate(self.blocks):
            t = block(t, eager)
            if i >= len(self.blocks) - layers:
                patches = self.norm(t)[:, 1 + self.registers :]
                outs.append(patches.transpose(1, 2).reshape(b, self.dim, rows, cols))
        return outs


class LinearHead(nn.Module):
    """BatchNorm and a 1x1 convolution over the concatenated token maps (DINOv2's linear probe)."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(dim, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward_with_features(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.bn(torch.cat(maps, 1))
        return self.conv_seg(self.dropout(features)), features


class DinoSegmentor(SegmentationModel):
    """A DINOv2 backbone (``backbone``) with the linear head (``decode_head``).

    Shape:
        input (B, 3, H, W), any size (padded to a multiple of 14 inside) -> logits (B, C, H, W).
    """

    def __init__(self, backbone: DinoViT, num_classes: int, head_layers: int = 4):
        super().__init__()
        self.backbone, self.head_layers = backbone, head_layers
        self.decode_head = LinearHead(head_layers * backbone.dim, num_classes)
        if any(getattr(b.attn, "lora_rank", 0) for b in backbone.blocks):
            for name, p in backbone.named_parameters():
                p.requires_grad_("lora_" in name)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        ph, pw = -h % PATCH, -w % PATCH
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        logits, features = self.decode_head.forward_with_features(self.backbone(x, self.head_layers))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w], features

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.decode_head.parameters())

    def no_weight_decay(self) -> set[str]:
        names = {"backbone.pos_embed", "backbone.cls_token", "backbone.mask_token"}
        return names | ({"backbone.register_tokens"} if self.backbone.registers else set())


@MODELS.register(
    hooks=ModelHooks(
        classes_key="decode_head.conv_seg.weight",
        signature_keys=(
            "backbone.patch_embed.proj.weight",
            "decode_head.bn.weight",
            "decode_head.conv_seg.weight",
        ),
    )
)
def dinov2_vit(
    num_classes: int,
    variant: str = "b",
    registers: int = 0,
    head_layers: int = 4,
    interpolate_offset: float = 0.1,
    interpolate_antialias: bool = False,
    lora_rank: int = 0,
    lora_alpha: float = 1.0,
) -> SegmentationModel:
    """A DINOv2 ViT (S/B/L/g, patch 14) with a linear segmentation head over its last ``head_layers``
    blocks; ``lora_rank`` > 0 freezes the backbone but for LoRA updates of its attention."""
    if not 1 <= head_layers <= VIT_VARIANTS.get(variant, VIT_VARIANTS["tiny"]).depth:
        raise ValueError(f"head_layers must be between 1 and the depth, got {head_layers}")
    backbone = DinoViT(variant, registers, interpolate_offset, interpolate_antialias, lora_rank, lora_alpha)
    return DinoSegmentor(backbone, num_classes, head_layers)
