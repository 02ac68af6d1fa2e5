"""ResNet, Wide ResNet and ResNeXt for ImageNet (He et al. 2015; Zagoruyko & Komodakis 2016; Xie et al. 2016).

State-dict keys and shapes are identical to torchvision's `models/resnet.py` (ResNet v1.5: the stride of a downsampling
Bottleneck sits on its 3x3 conv), so torchvision checkpoints load with `strict=True`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from resnetlab.models._base import ClassifierMixin, group, imagenet_cfg, with_in_chans
from resnetlab.models._registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding."""
    return nn.Conv2d(
        in_planes,
        out_planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        groups=groups,
        bias=False,
        dilation=dilation,
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus the shortcut (ResNet-18/34)."""

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and width_per_group=64")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, optionally grouped), 1x1 expand by 4, plus the shortcut (ResNet-50 and deeper)."""

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        # ResNeXt/Wide-ResNet widen the inner 3x3; plain ResNet keeps width == planes.
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(ClassifierMixin, nn.Module):
    """7x7 stem, max-pool, four stages of residual blocks (strides 1, 2, 2, 2), global average pool, linear head."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.groups = groups
        self.base_width = width_per_group
        self.inplanes = 64

        self.conv1 = nn.Conv2d(in_chans, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.num_features = 512 * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = self._make_classifier(num_classes)
        self.default_cfg = with_in_chans(imagenet_cfg(classifier="fc", first_conv="conv1"), in_chans)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each block starts as the identity, which helps large-batch training (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # Projection shortcut (1x1 conv + BN) wherever the shape changes.
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [
            block(self.inplanes, planes, groups=self.groups, base_width=self.base_width) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.forward_stem(x))
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)  # (B, num_features, H/32, W/32)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [
            ("stem", group(self.conv1, self.bn1)),
            ("layer1", self.layer1),
            ("layer2", self.layer2),
            ("layer3", self.layer3),
            ("layer4", self.layer4),
            ("fc", self.fc),
        ]


MODEL_CFGS: dict[str, dict[str, Any]] = {
    "resnet18": dict(block=BasicBlock, layers=(2, 2, 2, 2)),
    "resnet34": dict(block=BasicBlock, layers=(3, 4, 6, 3)),
    "resnet50": dict(block=Bottleneck, layers=(3, 4, 6, 3)),
    "resnet101": dict(block=Bottleneck, layers=(3, 4, 23, 3)),
    "resnet152": dict(block=Bottleneck, layers=(3, 8, 36, 3)),
    "wide_resnet50_2": dict(block=Bottleneck, layers=(3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": dict(block=Bottleneck, layers=(3, 4, 23, 3), width_per_group=128),
    "resnext50_32x4d": dict(block=Bottleneck, layers=(3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": dict(block=Bottleneck, layers=(3, 4, 23, 3), groups=32, width_per_group=8),
    "resnext101_64x4d": dict(block=Bottleneck, layers=(3, 4, 23, 3), groups=64, width_per_group=4),
}


def _create_resnet(variant: str, **kwargs: Any) -> ResNet:
    """Build `variant` from MODEL_CFGS; keyword options override the variant's own."""
    return ResNet(**{**MODEL_CFGS[variant], **kwargs})


@register_model
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18: BasicBlock, (2, 2, 2, 2)."""
    return _create_resnet("resnet18", **kwargs)


@register_model
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34: BasicBlock, (3, 4, 6, 3)."""
    return _create_resnet("resnet34", **kwargs)


@register_model
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50: Bottleneck, (3, 4, 6, 3)."""
    return _create_resnet("resnet50", **kwargs)


@register_model
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101: Bottleneck, (3, 4, 23, 3)."""
    return _create_resnet("resnet101", **kwargs)


@register_model
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152: Bottleneck, (3, 8, 36, 3)."""
    return _create_resnet("resnet152", **kwargs)


@register_model
def wide_resnet50_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-50-2: ResNet-50 with a twice as wide inner 3x3 in every Bottleneck."""
    return _create_resnet("wide_resnet50_2", **kwargs)


@register_model
def wide_resnet101_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-101-2: ResNet-101 with a twice as wide inner 3x3 in every Bottleneck."""
    return _create_resnet("wide_resnet101_2", **kwargs)


@register_model
def resnext50_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d: 32 groups of width 4 in the first stage's 3x3."""
    return _create_resnet("resnext50_32x4d", **kwargs)


@register_model
def resnext101_32x8d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 32x8d: 32 groups of width 8 in the first stage's 3x3."""
    return _create_resnet("resnext101_32x8d", **kwargs)


@register_model
def resnext101_64x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 64x4d: 64 groups of width 4 in the first stage's 3x3."""
    return _create_resnet("resnext101_64x4d", **kwargs)
