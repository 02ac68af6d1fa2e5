"""CIFAR ResNet-20/32/44/56/110 and their plain twins (He et al. 2015, section 4.2).

A 3x3 stem with 16 channels, then three stages of n BasicBlocks at 16/32/64 channels on 32/16/8 px maps (depth 6n+2),
global average pool, linear head. Shortcuts are "option A": parameter-free, a stride-2 subsample plus zero channel
padding where the shape changes. The plain twins are the same network with every shortcut removed, for the
degradation experiment; they have exactly the same parameters. Keys follow the akamaster checkpoints with the head
named `fc` (their `linear`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.models._base import ClassifierMixin, cifar_cfg, group, with_in_chans
from resnetlab.models._registry import register_model
from resnetlab.models.resnet import conv3x3


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by `stride` and zero-pad the channels from `in_planes` to `out_planes`."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_lo = (out_planes - in_planes) // 2
        self.pad_hi = out_planes - in_planes - self.pad_lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_lo, self.pad_hi))  # pads dims (W, H, C) from the last

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_lo}, {self.pad_hi})"


class CifarBasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the option-A shortcut unless `residual=False`, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.shortcut: nn.Module = (
            ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out += self.shortcut(x)
        return self.relu(out)


class CifarResNet(ClassifierMixin, nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; `residual=False` gives the plain twin."""

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_chans: int = 3,
        residual: bool = True,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.residual = residual
        self.in_planes = 16

        self.conv1 = conv3x3(in_chans, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.num_features = 64
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = self._make_classifier(num_classes)
        self.default_cfg = with_in_chans(cifar_cfg(classifier="fc", first_conv="conv1"), in_chans)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 ("Delving deep into rectifiers") init, as the paper's section 4.2 says.
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        strides = [stride] + [1] * (blocks - 1)
        layers = []
        for s in strides:
            layers.append(CifarBasicBlock(self.in_planes, planes, s, residual=self.residual))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)  # (B, 64, H/4, W/4)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [
            ("stem", group(self.conv1, self.bn1)),
            ("layer1", self.layer1),
            ("layer2", self.layer2),
            ("layer3", self.layer3),
            ("fc", self.fc),
        ]


# Variants as data: name -> CifarResNet options.
MODEL_CFGS: dict[str, dict[str, Any]] = {
    **{f"resnet{d}": dict(depth=d, residual=True) for d in (20, 32, 44, 56, 110)},
    **{f"plain{d}": dict(depth=d, residual=False) for d in (20, 32, 44, 56, 110)},
}


def _create_cifar_resnet(variant: str, **kwargs: Any) -> CifarResNet:
    kwargs.setdefault("num_classes", 10)
    return CifarResNet(**{**MODEL_CFGS[variant], **kwargs})


@register_model
def resnet20(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-20 (n=3), 0.27M parameters."""
    return _create_cifar_resnet("resnet20", **kwargs)


@register_model
def resnet32(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32 (n=5), 0.46M parameters."""
    return _create_cifar_resnet("resnet32", **kwargs)


@register_model
def resnet44(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-44 (n=7), 0.66M parameters."""
    return _create_cifar_resnet("resnet44", **kwargs)


@register_model
def resnet56(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-56 (n=9), 0.85M parameters."""
    return _create_cifar_resnet("resnet56", **kwargs)


@register_model
def resnet110(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-110 (n=18), 1.7M parameters."""
    return _create_cifar_resnet("resnet110", **kwargs)


@register_model
def plain20(**kwargs: Any) -> CifarResNet:
    """Plain-20: CIFAR ResNet-20 without shortcuts."""
    return _create_cifar_resnet("plain20", **kwargs)


@register_model
def plain32(**kwargs: Any) -> CifarResNet:
    """Plain-32: CIFAR ResNet-32 without shortcuts."""
    return _create_cifar_resnet("plain32", **kwargs)


@register_model
def plain44(**kwargs: Any) -> CifarResNet:
    """Plain-44: CIFAR ResNet-44 without shortcuts."""
    return _create_cifar_resnet("plain44", **kwargs)


@register_model
def plain56(**kwargs: Any) -> CifarResNet:
    """Plain-56: CIFAR ResNet-56 without shortcuts."""
    return _create_cifar_resnet("plain56", **kwargs)


@register_model
def plain110(**kwargs: Any) -> CifarResNet:
    """Plain-110: CIFAR ResNet-110 without shortcuts."""
    return _create_cifar_resnet("plain110", **kwargs)
