"""GoogLeNet / Inception v1 (Szegedy et al. 2014) with its two auxiliary classifiers.

Keys and shapes are identical to torchvision's `models/googlenet.py` (BatchNorm after every conv, and the "5x5"
branch built with a 3x3 conv as torchvision's weights have it, pytorch/vision#906), so its checkpoints load with
`strict=True`. torchvision's ImageNet weights were ported from TensorFlow and expect `transform_input=True`.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.models._base import IMAGENET_MEAN, IMAGENET_STD, ClassifierMixin, group, imagenet_cfg, with_in_chans
from resnetlab.models._registry import register_model

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1-3x3; 1x1-3x3; maxpool-1x1) concatenated on channels."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            # kernel 3, not the paper's 5: torchvision's weights were trained so (pytorch/vision#906).
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4x4 average pool, 1x1 conv to 128, FC 1024, dropout, FC to classes."""

    def __init__(self, in_channels: int, num_classes: int, drop_rate: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.reset_classifier(num_classes)  # fc2; none for num_classes=0, as for the main head
        self.dropout = nn.Dropout(p=drop_rate)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc2 = nn.Linear(1024, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))  # (B, 128, 4, 4)
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)  # (B, 1024)
        return self.fc2(self.dropout(x))


class GoogLeNet(ClassifierMixin, nn.Module):
    """Inception v1; in training mode with `aux_logits` it returns GoogLeNetOutputs(logits, aux2, aux1)."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        drop_rate: float = 0.2,
        aux_drop_rate: float = 0.7,
    ) -> None:
        super().__init__()
        if transform_input and in_chans != 3:
            raise ValueError("transform_input=True re-normalises RGB input and needs in_chans=3")
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        self.transform_input = transform_input

        self.conv1 = BasicConv2d(in_chans, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)

        # Without aux heads the attributes stay None, so the state dict has no aux keys (as torchvision).
        self.aux1 = InceptionAux(512, num_classes, aux_drop_rate) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, aux_drop_rate) if aux_logits else None

        self.num_features = self.inception5b.out_channels
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=drop_rate)
        self.fc = self._make_classifier(num_classes)
        self.default_cfg = with_in_chans(imagenet_cfg(classifier="fc", first_conv="conv1.conv"), in_chans)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """New main head and new final layers of the aux heads, so aux losses match the new classes."""
        super().reset_classifier(num_classes)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.reset_classifier(num_classes)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        # Map ImageNet-normalised input to the [-1, 1] scaling the ported TensorFlow weights expect.
        if not self.transform_input:
            return x
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def _forward_features(
        self, x: torch.Tensor, with_aux: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Last feature map plus the aux logits (None unless `with_aux`)."""
        x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))  # (B, 64, H/4, W/4)
        x = self.maxpool2(self.conv3(self.conv2(x)))  # (B, 192, H/8, W/8)
        x = self.inception3b(self.inception3a(x))  # (B, 480, H/8, W/8)
        x = self.inception4a(self.maxpool3(x))  # (B, 512, H/16, W/16)
        aux1 = self.aux1(x) if with_aux and self.aux1 is not None else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # (B, 528, H/16, W/16)
        aux2 = self.aux2(x) if with_aux and self.aux2 is not None else None
        x = self.maxpool4(self.inception4e(x))  # (B, 832, H/32, W/32)
        x = self.inception5b(self.inception5a(x))  # (B, 1024, H/32, W/32)
        return x, aux2, aux1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_features(x, with_aux=False)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        # Aux heads held in eval mode (a frozen backbone, a staged run's head epochs) learn nothing: their losses
        # only added 0.3 x CE each, without a gradient, to the loss a frozen run reports.
        with_aux = self.training and self.aux_logits and self.aux1.training
        x, aux2, aux1 = self._forward_features(x, with_aux)
        logits = self.forward_head(x)
        return GoogLeNetOutputs(logits, aux2, aux1) if with_aux else logits

    def stages(self) -> list[tuple[str, nn.Module]]:
        # The aux heads branch off inception4a/4d, so they train with that stage.
        return [
            ("stem", group(self.conv1, self.conv2, self.conv3)),
            ("inception3", group(self.inception3a, self.inception3b)),
            (
                "inception4",
                group(
                    self.inception4a,
                    self.inception4b,
                    self.inception4c,
                    self.inception4d,
                    self.inception4e,
                    self.aux1,
                    self.aux2,
                ),
            ),
            ("inception5a", self.inception5a),
            ("inception5b", self.inception5b),
            ("fc", self.fc),
        ]


@register_model
def googlenet(**kwargs: Any) -> GoogLeNet:
    """GoogLeNet (Inception v1), 6.6M parameters without the aux heads."""
    return GoogLeNet(**kwargs)
