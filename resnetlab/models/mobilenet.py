"""MobileNet v1 (Howard et al. 2017) and MobileNet v2 (Sandler et al. 2018).

MobileNetV2's keys and shapes are identical to torchvision's `models/mobilenetv2.py` (`features.*`, `classifier.1`),
so its checkpoints load with `strict=True`. MobileNetV1 follows the paper's table 1: a strided 3x3 stem and 13
depthwise-separable blocks, 4.2M parameters at alpha=1 with 1000 classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from resnetlab.models._base import ClassifierMixin, group, imagenet_cfg, with_in_chans
from resnetlab.models._registry import register_model


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% down (TF MobileNet's rule, as torchvision)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + activation; a Sequential so keys read `.0` conv, `.1` bn as torchvision's."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act_layer: type[nn.Module] = nn.ReLU6,
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            act_layer(inplace=True),
        )
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection; identity shortcut when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden_dim, kernel_size=1))
        layers += [
            ConvBNAct(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            # Linear bottleneck: no activation after the projection (the paper's section 3.2).
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


def _stage_slices(strides: Sequence[int], num_layers: int) -> list[slice]:
    """Split `features` into stages, a new one at every stride-2 layer after the stem (index 0 is the stem)."""
    starts = [0] + [i for i, s in enumerate(strides) if s == 2 and i > 0] + [num_layers]
    return [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]


def _feature_stages(features: nn.Sequential, strides: Sequence[int]) -> list[tuple[str, nn.Module]]:
    """stem, stage1.. views of `features`; the last layer stands alone so hooks on it fire (see ClassifierMixin)."""
    slices = _stage_slices(strides, len(features) - 1)
    out: list[tuple[str, nn.Module]] = [("stem", group(*features[slices[0]]))]
    out += [(f"stage{i}", group(*features[sl])) for i, sl in enumerate(slices[1:], start=1)]
    out.append((f"features.{len(features) - 1}", features[-1]))
    return out


class MobileNetV2(ClassifierMixin, nn.Module):
    """Strided 3x3 stem, 17 inverted-residual blocks, 1x1 conv to 1280, global pool, dropout + linear."""

    # t (expansion), c (channels), n (repeats), s (stride of the first repeat)
    INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)

        features: list[nn.Module] = [ConvBNAct(in_chans, input_channel, stride=2)]
        strides = [2]
        for t, c, n, s in self.INVERTED_RESIDUAL_SETTING:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(InvertedResidual(input_channel, output_channel, stride, expand_ratio=t))
                strides.append(stride)
                input_channel = output_channel
        features.append(ConvBNAct(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self._strides = tuple(strides)

        self.num_features = self.last_channel
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Identity()  # the dropout lives in classifier.0, where torchvision's keys put it
        self.classifier = self._make_classifier(num_classes)
        self.default_cfg = with_in_chans(imagenet_cfg(classifier="classifier", first_conv="features.0.0"), in_chans)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return nn.Sequential(nn.Dropout(p=self.drop_rate), nn.Linear(self.num_features, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 1280, H/32, W/32)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [*_feature_stages(self.features, self._strides), ("classifier", self.classifier)]


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv-BN-ReLU then 1x1 pointwise conv-BN-ReLU (the paper's figure 3)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            ConvBNAct(in_channels, in_channels, stride=stride, groups=in_channels, act_layer=nn.ReLU),
            ConvBNAct(in_channels, out_channels, kernel_size=1, act_layer=nn.ReLU),
        )


class MobileNetV1(ClassifierMixin, nn.Module):
    """Strided 3x3 stem and 13 depthwise-separable blocks, each channel count scaled by the width multiplier alpha."""

    # (output channels, stride) of the 13 depthwise-separable blocks, the paper's table 1. The last block's stride is 1:
    # the table's "s2" there would leave a 4x4 map before the 7x7 average pool, which the paper's own sizes rule out.
    BLOCKS: tuple[tuple[int, int], ...] = (
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (1024, 2),
        (1024, 1),
    )

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        alpha: float = 1.0,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.alpha = alpha
        in_ch = int(32 * alpha)
        features: list[nn.Module] = [ConvBNAct(in_chans, in_ch, stride=2, act_layer=nn.ReLU)]
        strides = [2]
        for out_ch, stride in self.BLOCKS:
            features.append(DepthwiseSeparable(in_ch, int(out_ch * alpha), stride))
            strides.append(stride)
            in_ch = int(out_ch * alpha)
        self.features = nn.Sequential(*features)
        self._strides = tuple(strides)

        self.num_features = in_ch
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = self._make_classifier(num_classes)
        self.default_cfg = with_in_chans(imagenet_cfg(classifier="fc", first_conv="features.0.0"), in_chans)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 1024 * alpha, H/32, W/32)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [*_feature_stages(self.features, self._strides), ("fc", self.fc)]


@register_model
def mobilenet_v2(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 1.0 (3.5M parameters); `width_mult` scales every layer."""
    return MobileNetV2(**kwargs)


@register_model
def mobilenet_v1(**kwargs: Any) -> MobileNetV1:
    """MobileNetV1 1.0 (4.2M parameters); `alpha` scales every layer."""
    return MobileNetV1(**kwargs)


@register_model
def mobilenet_v1_075(**kwargs: Any) -> MobileNetV1:
    """MobileNetV1 0.75 (2.6M parameters)."""
    return MobileNetV1(**{"alpha": 0.75, **kwargs})


@register_model
def mobilenet_v1_050(**kwargs: Any) -> MobileNetV1:
    """MobileNetV1 0.5 (1.3M parameters)."""
    return MobileNetV1(**{"alpha": 0.5, **kwargs})
