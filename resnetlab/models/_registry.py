"""Model registry in the timm style: `@register_model` builders, `create_model`, `list_models`."""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from resnetlab.errors import ResnetlabError

if TYPE_CHECKING:
    from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name. Builders take `num_classes`, `in_chans` and keyword options."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def _ensure_loaded() -> None:
    # Importing the model modules runs their @register_model decorators.
    from resnetlab.models import cifar_resnet, googlenet, mobilenet, resnet  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    _ensure_loaded()
    return name in _MODELS


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder for `name`; unknown names fail naming the closest valid ones."""
    _ensure_loaded()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ResnetlabError(f"unknown model {name!r}.{hint} See `resnetlab models` for the full list.")
    return _MODELS[name]


def create_model(
    name: str,
    num_classes: int | None = None,
    pretrained: str | os.PathLike | bool | None = None,
    in_chans: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; `pretrained` is "imagenet" (or True, as in timm), a weights file path, or None.

    `num_classes=None` keeps the architecture's own default: 1000 (ImageNet) for most, 10 for the CIFAR ResNets;
    0 leaves out the classifier (features only).
    """
    for arg, value, low in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ResnetlabError(f"{arg}={value!r}: a whole number, at least {low}")
    if pretrained is True:
        pretrained = "imagenet"
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = get_builder(name)(in_chans=in_chans, **kwargs)
    if pretrained:
        from resnetlab.models.weights import load_pretrained

        load_pretrained(model, name, pretrained, num_classes=model.num_classes)
    return model
