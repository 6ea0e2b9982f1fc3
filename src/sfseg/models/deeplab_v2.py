"""DeepLab-v2 with a ResNet-101 backbone, as the domain-adaptation literature uses it.

Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution, and
Fully Connected CRFs", TPAMI 2017. Two backbone conventions share one implementation:

- ``caffe`` (the community's checkpoints: AdaptSegNet, CRST, LDBE, CCM, TLlib): stride on the first 1x1
  convolution of a bottleneck, ceil-mode max-pool, and dilation 2 (layer3) / 4 (layer4) in *every* block.
  A 1024x512 input gives 129x65 logits.
- ``torchvision`` (for ImageNet weights downloaded from torchvision): stride on the 3x3, floor max-pool,
  and the first block of a dilated layer keeps the previous dilation. A 1024x512 input gives 128x64 logits.

State-dict keys are those of torchvision's ResNet plus ``layer5.conv2d_list.{i}`` for the classifier, so
the community's files load by name. The classifier ("ASPP" of DeepLab-v2) is a **sum** of 3x3 convolutions
with dilation = padding in {6, 12, 18, 24}; ``branches=2`` keeps the first two, which is what AdaptSegNet's
checkpoints were trained with (its forward returned inside the loop). BatchNorm scale and shift are frozen
(requires_grad False), as in the reference. The forward returns logits at output stride 8; callers upsample.
"""

from __future__ import annotations

import torch
from torch import nn

from sfseg.models.base import SegmentationModel
from sfseg.models.deeplab_small import SummedASPP
from sfseg.models.registry import ModelHooks
from sfseg.registry import MODELS

BLOCKS_R101 = (3, 4, 23, 3)
ASPP_DILATIONS = (6, 12, 18, 24)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        cin: int,
        width: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        stride_in_1x1: bool = True,
    ):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(cin, width, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class DeepLabV2(SegmentationModel):
    """DeepLab-v2 ResNet.

    Args:
        num_classes: output channels.
        backbone: ``caffe`` or ``torchvision`` (see the module docstring).
        branches: classifier branches summed (4; 2 for AdaptSegNet's checkpoints).
        blocks: bottlenecks per layer (ResNet-101: 3, 4, 23, 3).

    Shape:
        input (B, 3, H, W) normalised image; output (B, num_classes, h, w) logits at output stride 8
        (``caffe``: h = ceil-mode size, e.g. 65 for H = 512; ``torchvision``: H / 8).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "caffe",
        branches: int = 4,
        blocks: tuple[int, ...] = BLOCKS_R101,
    ):
        super().__init__()
        if backbone not in ("caffe", "torchvision"):
            raise ValueError(f"backbone must be 'caffe' or 'torchvision', got {backbone!r}")
        if branches not in (2, 4):
            raise ValueError(f"branches must be 2 or 4, got {branches}")
        caffe = backbone == "caffe"
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=caffe)
        self.inplanes = 64
        self.layer1 = self._layer(64, blocks[0], 1, 1, 1, caffe)
        self.layer2 = self._layer(128, blocks[1], 2, 1, 1, caffe)
        # torchvision's replace_stride_with_dilation: a layer's first block keeps the previous dilation.
        self.layer3 = self._layer(256, blocks[2], 1, 2, 2 if caffe else 1, caffe)
        self.layer4 = self._layer(512, blocks[3], 1, 4, 4 if caffe else 2, caffe)
        self.layer5 = SummedASPP(2048, num_classes, ASPP_DILATIONS[:branches])
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)

    def _layer(self, width: int, n: int, stride: int, dilation: int, first_dilation: int, caffe: bool):
        downsample = None
        if stride != 1 or self.inplanes != width * 4 or dilation in (2, 4):
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, width * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(width * 4)
            )
        layers = [Bottleneck(self.inplanes, width, stride, first_dilation, downsample, stride_in_1x1=caffe)]
        self.inplanes = width * 4
        layers += [Bottleneck(self.inplanes, width, 1, dilation, stride_in_1x1=caffe) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.layer5.parameters())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer5(self.features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the classifier's input features, both at output stride 8."""
        features = self.features(x)
        return self.layer5(features), features


@MODELS.register(hooks=ModelHooks(classes_key="layer5.conv2d_list.0.weight"))
def deeplabv2_r101(num_classes: int, backbone: str = "caffe", branches: int = 4) -> nn.Module:
    """DeepLab-v2 ResNet-101 (about 43.9 M parameters with 19 classes)."""
    return DeepLabV2(num_classes, backbone=backbone, branches=branches)
