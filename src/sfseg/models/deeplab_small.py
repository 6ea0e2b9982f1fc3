"""A small DeepLab-v2-style network for CPU-sized benchmarks.

Same structure as DeepLab-v2 (Chen et al., TPAMI 2017) at toy scale: a residual backbone whose last stages
trade stride for dilation (output stride 4), and the DeepLab-v2 classifier — parallel 3x3 convolutions with
different dilations, **summed** (no BN, no concatenation). Logits are upsampled bilinearly to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sfseg.models.base import SegmentationModel
from sfseg.models.registry import ModelHooks
from sfseg.registry import MODELS


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when the width changes)."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__()
        self.conv1 = ConvBNReLU(cin, cout, dilation=dilation)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)) if cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + identity)


class SummedASPP(nn.Module):
    """DeepLab-v2 classifier: sum of dilated 3x3 convolutions, each ``in_channels -> num_classes``."""

    def __init__(self, in_channels: int, num_classes: int, dilations: tuple[int, ...]):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(conv(x) for conv in self.conv2d_list)


class DeepLabSmall(SegmentationModel):
    """Dilated residual backbone + summed multi-dilation classifier.

    After the first stride, resolution is kept at ``output_stride`` and the receptive field grows by
    dilation instead, as DeepLab-v2 does in its last two stages.

    Args:
        num_classes: output channels.
        width: channels of the first stage; later stages use 2x and 3x.
        output_stride: 2 or 4, the ratio of input to feature resolution.
        dilations: dilations of the classifier branches.

    Shape:
        input (B, 3, H, W) normalised image; output (B, num_classes, H, W) logits.
    """

    def __init__(
        self,
        num_classes: int,
        width: int = 24,
        output_stride: int = 2,
        dilations: tuple[int, ...] = (1, 3, 6, 9),
    ):
        super().__init__()
        if output_stride not in (2, 4):
            raise ValueError(f"output_stride must be 2 or 4, got {output_stride}")
        w1, w2, w3 = width, 2 * width, 3 * width
        r = 4 // output_stride  # extra dilation when the second stride is dropped
        self.backbone = nn.Sequential(
            ConvBNReLU(3, w1, stride=2),
            BasicBlock(w1, w1),
            ConvBNReLU(w1, w2, stride=2 if output_stride == 4 else 1, dilation=1),
            BasicBlock(w2, w2, dilation=r),
            BasicBlock(w2, w3, dilation=2 * r),
            BasicBlock(w3, w3, dilation=4 * r),
        )
        self.classifier = SummedASPP(w3, num_classes, tuple(dilations))

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (at the input size) and the classifier's input features (at the output stride)."""
        features = self.backbone(x)
        logits = F.interpolate(
            self.classifier(features), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        return logits, features


@MODELS.register(
    hooks=ModelHooks(
        classes_key="classifier.conv2d_list.0.weight",
        signature_keys=("backbone.0.0.weight", "classifier.conv2d_list.0.weight"),
    )
)
def deeplab_small(
    num_classes: int, width: int = 24, output_stride: int = 2, dilations: tuple[int, ...] = (1, 3, 6, 9)
) -> nn.Module:
    """The ToyCity default: about 0.3 M parameters, trains on a 2-core CPU in minutes."""
    return DeepLabSmall(num_classes, width=width, output_stride=output_stride, dilations=tuple(dilations))
