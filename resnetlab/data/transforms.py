"""Transform presets on torchvision transforms v2: `train` (augmenting) and `eval` (resize + center crop).

Both accept a PIL image or a uint8 tensor (C, H, W) (the RAM cache stores those) and return a normalised float
tensor (C, H, W), or with `normalize=False` the uint8 tensor: loaders then normalise whole batches at once with
`BatchNormalize` (on the training device), which is several times cheaper than per image on a CPU. Each preset
carries `decode_size`: the short side it first resizes to, which the loader uses for reduced-size JPEG decoding and
for the size of cached images, and `mean` / `std`. The uint8 eval preset is deterministic and says so with
`cache_output` (its output (H, W)): the RAM cache then stores its output rather than the decoded image.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from resnetlab.errors import ResnetlabError

INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
TRAIN_DEFAULTS: dict[str, Any] = {
    "scale": (0.08, 1.0),  # RandomResizedCrop area range
    "ratio": (3 / 4, 4 / 3),
    "hflip": 0.5,
    "vflip": 0.0,
    "rotation": 0.0,  # degrees, uniform in [-rotation, rotation]
    "color_jitter": 0.0,  # brightness/contrast/saturation strength (float) or a 3/4-tuple
    "auto_augment": None,  # None, "rand" (RandAugment) or "trivial" (TrivialAugmentWide)
    "re_prob": 0.0,  # random erasing probability, applied to the normalised tensor
}
_AUTO_AUGMENT = {"rand": v2.RandAugment, "trivial": v2.TrivialAugmentWide}
# Train images are cached/decoded a bit larger than eval so RandomResizedCrop rarely upsamples.
TRAIN_DECODE_FACTOR = 1.25


def _size(img_size: int | tuple[int, int] | list) -> tuple[int, int]:
    """(H, W) from an int or an (H, W) / (C, H, W) sequence."""
    if isinstance(img_size, int):
        return img_size, img_size
    dims = tuple(int(x) for x in img_size)[-2:]
    return (dims[0], dims[-1]) if len(dims) == 2 else (dims[0], dims[0])


def _interp(name: str) -> InterpolationMode:
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise ResnetlabError(f"interpolation {name!r}: choose one of {', '.join(INTERPOLATIONS)}") from None


def _tail(mean, std, normalize: bool = True) -> list:
    """PIL/uint8 -> normalised float tensor, or a uint8 tensor (C, H, W) when `normalize` is off."""
    if not normalize:
        return [v2.ToImage()]
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def _color_jitter(value) -> v2.ColorJitter:
    values = (value,) * 3 if isinstance(value, (int, float)) else tuple(value)
    return v2.ColorJitter(*values)


def _train(
    size: tuple[int, int], mean, std, crop_pct: float, interp: InterpolationMode, aug: dict, normalize: bool = True
) -> v2.Compose:
    ops: list = [
        v2.PILToTensor(),  # see `_eval`
        v2.RandomResizedCrop(size, scale=tuple(aug["scale"]), ratio=tuple(aug["ratio"]), interpolation=interp),
    ]
    if aug["hflip"] > 0:
        ops.append(v2.RandomHorizontalFlip(aug["hflip"]))
    if aug["vflip"] > 0:
        ops.append(v2.RandomVerticalFlip(aug["vflip"]))
    if aug["rotation"]:
        ops.append(v2.RandomRotation(aug["rotation"], interpolation=interp))
    if aug["color_jitter"]:
        ops.append(_color_jitter(aug["color_jitter"]))
    if aug["auto_augment"]:
        if aug["auto_augment"] not in _AUTO_AUGMENT:
            raise ResnetlabError(f"auto_augment {aug['auto_augment']!r}: choose one of {', '.join(_AUTO_AUGMENT)}")
        ops.append(_AUTO_AUGMENT[aug["auto_augment"]](interpolation=interp))
    ops += _tail(mean, std, normalize)
    if aug["re_prob"] > 0:
        # Erase to the mean colour: 0 once normalised, the same pixels whichever side of normalisation it runs.
        value = 0 if normalize else [round(255 * m) for m in mean]
        ops.append(v2.RandomErasing(p=aug["re_prob"], value=value))
    transform = v2.Compose(ops)
    transform.decode_size = math.floor(min(size) / crop_pct * TRAIN_DECODE_FACTOR)
    return transform


def _eval(
    size: tuple[int, int], mean, std, crop_pct: float, interp: InterpolationMode, normalize: bool = True
) -> v2.Compose:
    # Square targets: shorter side to size/crop_pct, aspect kept (torchvision/timm eval). Non-square: both sides.
    resize = math.floor(size[0] / crop_pct) if size[0] == size[1] else tuple(math.floor(s / crop_pct) for s in size)
    # PIL images become uint8 tensors first: torchvision's SIMD resize is ~3x faster than PIL's here, and every
    # path (cached, uncached, predict, serve) then resizes with the same code and gets the same pixels.
    ops = [v2.PILToTensor(), v2.Resize(resize, interpolation=interp), v2.CenterCrop(size), *_tail(mean, std, normalize)]
    transform = v2.Compose(ops)
    transform.decode_size = resize if isinstance(resize, int) else max(resize)
    # Deterministic with uint8 output: a RAM cache can keep the output itself, (H, W) = `size`, so warm epochs skip
    # the transform and only gather pixels.
    transform.cache_output = None if normalize else size
    return transform


def build_transform(
    kind: str,
    img_size: int | tuple[int, int],
    mean,
    std,
    crop_pct: float = 0.875,
    interpolation: str = "bilinear",
    normalize: bool = True,
    **augment,
) -> v2.Compose:
    """The `train` or `eval` preset; `augment` keys for train are those of `TRAIN_DEFAULTS`.

    `normalize=False` stops at a uint8 tensor (C, H, W); pair it with `BatchNormalize(transform.mean, transform.std)`.
    """
    size, interp = _size(img_size), _interp(interpolation)
    if not 0 < crop_pct <= 1:
        raise ResnetlabError(f"crop_pct {crop_pct}: must be in (0, 1]")
    if kind == "eval":
        transform = _eval(size, mean, std, crop_pct, interp, normalize)
    elif kind == "train":
        unknown = set(augment) - set(TRAIN_DEFAULTS)
        if unknown:
            raise ResnetlabError(f"unknown augmentation option(s): {', '.join(sorted(unknown))}")
        transform = _train(size, mean, std, crop_pct, interp, {**TRAIN_DEFAULTS, **augment}, normalize)
    else:
        raise ResnetlabError(f"transform kind {kind!r}: choose train or eval")
    transform.resize_interpolation = interpolation  # the loader pre-resizes cached images the same way
    transform.mean, transform.std = tuple(mean), tuple(std)
    return transform


def eval_transform_from_cfg(default_cfg: dict, img_size: int | None = None, normalize: bool = True) -> v2.Compose:
    """The eval preset matching a model's `default_cfg` (input_size, mean, std, crop_pct, interpolation)."""
    return _preset_from_cfg("eval", default_cfg, img_size, normalize)


def train_transform_from_cfg(
    default_cfg: dict, img_size: int | None = None, normalize: bool = True, **augment
) -> v2.Compose:
    """The train preset with the model's normalisation and interpolation."""
    return _preset_from_cfg("train", default_cfg, img_size, normalize, **augment)


def _preset_from_cfg(kind: str, default_cfg: dict, img_size: int | None, normalize: bool, **augment) -> v2.Compose:
    return build_transform(
        kind,
        img_size or tuple(default_cfg["input_size"])[-2:],
        default_cfg["mean"],
        default_cfg["std"],
        crop_pct=default_cfg.get("crop_pct", 0.875),
        interpolation=default_cfg.get("interpolation", "bilinear"),
        normalize=normalize,
        **augment,
    )


class BatchNormalize:
    """uint8 images (B, C, H, W) -> normalised float32 (B, C, H, W) on the same device, memory format kept.

    `(x / 255 - mean) / std` folded into one multiply-add (`x * scale + shift`) over the whole batch: on a CPU this
    is several times cheaper than torchvision's per-image ToDtype + Normalize, and on a GPU it runs after a
    4x smaller host-to-device copy. Float input (already normalised) passes through unchanged.
    """

    def __init__(self, mean, std) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self._consts: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"BatchNormalize(mean={self.mean}, std={self.std})"

    def _for(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._consts:
            mean, std = torch.tensor(self.mean), torch.tensor(self.std)
            scale, shift = (1.0 / (255.0 * std)).view(1, -1, 1, 1), (-mean / std).view(1, -1, 1, 1)
            self._consts[device] = (scale.to(device), shift.to(device))
        return self._consts[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        scale, shift = self._for(images.device)
        return torch.addcmul(shift, images, scale)  # uint8 * float32 promotes: one pass, no float32 copy first


class MixupCutmix:
    """Batch transform: (images (B, C, H, W), labels (B,)) -> (mixed images, soft targets (B, num_classes)).

    With probability `prob` a batch gets MixUp or CutMix (chosen evenly when both alphas are > 0); otherwise the
    targets are plain one-hot, so the loss always sees soft targets of the same shape.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0):
        choices = []
        if mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not choices:
            raise ResnetlabError("mixup/cutmix: set mixup_alpha or cutmix_alpha > 0")
        self.num_classes = num_classes
        self.prob = prob
        self.mix = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prob < 1.0 and torch.rand(()).item() >= self.prob:
            return images, torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        images, targets = self.mix(images, labels)
        return images, targets.to(images.dtype)
