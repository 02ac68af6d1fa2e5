"""Pieces every model shares: default_cfg constants and the classifier-head mixin."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def imagenet_cfg(**overrides: Any) -> dict[str, Any]:
    """A fresh default_cfg for a 224 px ImageNet model; `overrides` sets `classifier`, `first_conv`, ..."""
    cfg = {
        "input_size": (3, 224, 224),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "classifier": "fc",
        "first_conv": "conv1",
    }
    cfg.update(overrides)
    return cfg


def cifar_cfg(**overrides: Any) -> dict[str, Any]:
    """A fresh default_cfg for a 32 px CIFAR-10 model (no crop: the whole image is the input)."""
    return imagenet_cfg(input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_pct=1.0, **overrides)


def with_in_chans(cfg: dict[str, Any], in_chans: int) -> dict[str, Any]:
    """`cfg` with its input size saying `in_chans` channels."""
    return {**cfg, "input_size": (in_chans, *cfg["input_size"][1:])}


def group(*modules: nn.Module | None) -> nn.ModuleList:
    """A parameter group for `stages()` made of sibling modules (None skipped); a view, not registered anywhere."""
    return nn.ModuleList(m for m in modules if m is not None)


class ClassifierMixin:
    """Head plumbing shared by all models, driven by `default_cfg["classifier"]` (the head's attribute name).

    A model sets `num_classes`, `num_features`, `default_cfg`, an `avgpool` module and a `dropout` module, and defines
    `forward_features`; the mixin gives it the rest of the common model interface.

    `stages()` (defined by each model) lists (name, module) from input to output: the last entry is the classifier,
    the second-to-last a real submodule whose output is the last feature map (forward hooks on it fire, for Grad-CAM);
    earlier entries may be `group(...)` views used only to freeze/unfreeze parameters.
    """

    num_classes: int
    num_features: int
    default_cfg: dict[str, Any]
    avgpool: nn.Module
    dropout: nn.Module

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.default_cfg["classifier"])

    def _make_classifier(self, num_classes: int) -> nn.Module:
        # num_classes=0 gives a headless feature extractor, as in timm.
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for `num_classes` outputs."""
        self.num_classes = num_classes
        setattr(self, self.default_cfg["classifier"], self._make_classifier(num_classes))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the last feature map (B, C, H, W) to (B, C); then logits (B, num_classes) unless `pre_logits`."""
        x = torch.flatten(self.avgpool(x), 1)
        if pre_logits:
            return x
        return self.get_classifier()(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
