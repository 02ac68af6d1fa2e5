"""Classifier heads: swap the model's final layer for a new one (optionally an MLP with dropout)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def build_head(in_features: int, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> nn.Module:
    """`Linear` when `hidden` is empty, else Linear-BN-ReLU-Dropout blocks ending in a Linear."""
    if not hidden:
        return (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
            if dropout
            else nn.Linear(in_features, num_classes)
        )
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def replace_head(model: nn.Module, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> nn.Module:
    """Replace the classifier named by `model.default_cfg["classifier"]`; returns the new head."""
    if not hidden and not dropout:
        model.reset_classifier(num_classes)
        return getattr(model, model.default_cfg["classifier"])
    head = build_head(model.num_features, num_classes, hidden, dropout)
    setattr(model, model.default_cfg["classifier"], head)
    model.num_classes = num_classes
    return head
