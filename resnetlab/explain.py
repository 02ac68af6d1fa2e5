"""Grad-CAM (Selvaraju et al., 2017): where in the image the evidence for a class comes from.

The class score's gradient with respect to the last feature stage (`model.stages()[-2]`), averaged over space, weights
that stage's channels; the ReLU of the weighted sum is the heat map. It is computed in fp32 with autograd on the
eval-mode model, then mapped back onto the original photo: the model only saw the centre crop that the eval transform
takes, so the heat map is placed over that crop and is zero outside it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from resnetlab.errors import ResnetlabError


def target_layer(model: nn.Module) -> nn.Module:
    """The last feature stage: second-to-last entry of `model.stages()` (the last is the classifier head)."""
    return model.stages()[-2][1]


def grad_cam(
    model: nn.Module, x: torch.Tensor, class_index: int | None = None, layer: nn.Module | None = None
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Grad-CAM for one image `x` (1, C, H, W).

    Returns the heat map (h, w) at the feature stage's resolution scaled to [0, 1] (all zeros when no location
    supports the class), the explained class index, and the softmax probabilities (K,).
    """
    layer = layer or target_layer(model)
    saved: dict[str, torch.Tensor] = {}

    def keep_activation(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        saved["act"] = output
        # Hand a copy downstream: an in-place op after the stage (ReLU(inplace=True)) would otherwise change the
        # saved activation and break the gradient taken with respect to it.
        return output.clone()

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(keep_activation)
    try:
        with torch.enable_grad():
            param = next(model.parameters())
            x = x.detach().to(param.device, torch.float32).requires_grad_(True)  # a graph even if weights are frozen
            logits = model(x)
            if isinstance(logits, (tuple, list)):  # GoogLeNet-style outputs: logits first
                logits = logits[0]
            index = int(logits[0].argmax()) if class_index is None else int(class_index)
            if not 0 <= index < logits.shape[1]:
                raise ResnetlabError(f"class index {index} is out of range for {logits.shape[1]} classes")
            (grads,) = torch.autograd.grad(logits[0, index], saved["act"])
    finally:
        handle.remove()
        model.train(was_training)
    act = saved["act"][0].detach().float()  # (C, h, w)
    weights = grads[0].float().mean(dim=(1, 2))  # (C,)
    cam = F.relu((weights[:, None, None] * act).sum(dim=0))  # (h, w)
    peak = cam.max()
    cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    return cam.cpu(), index, torch.softmax(logits[0].detach().float(), dim=0).cpu()


def crop_box(width: int, height: int, default_cfg: dict[str, Any]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the region the eval transform keeps, in original-image pixels.

    The eval transform resizes to `size / crop_pct` (the shorter side for square inputs, aspect kept; both sides
    for non-square inputs) and takes the centre `size` crop.
    """
    h, w = default_cfg["input_size"][-2:]
    crop_pct = float(default_cfg.get("crop_pct") or 1.0)
    if h == w:
        scale = math.floor(h / crop_pct) / min(width, height)  # original pixels -> resized pixels
        crop_w, crop_h = w / scale, h / scale
    else:
        crop_w = w / math.floor(w / crop_pct) * width
        crop_h = h / math.floor(h / crop_pct) * height
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return left, top, left + crop_w, top + crop_h


def cam_to_image(cam: torch.Tensor, size: tuple[int, int], default_cfg: dict[str, Any]) -> np.ndarray:
    """Place a (h, w) heat map over the crop it explains in an image of `size` (W, H); float32 (H, W), 0 outside."""
    width, height = size
    left, top, right, bottom = crop_box(width, height, default_cfg)
    x0, y0 = round(left), round(top)
    crop_w, crop_h = max(1, round(right) - x0), max(1, round(bottom) - y0)
    resized = F.interpolate(cam[None, None].float(), size=(crop_h, crop_w), mode="bilinear", align_corners=False)
    resized = resized[0, 0].clamp_(0, 1).numpy()
    heat = np.zeros((height, width), dtype=np.float32)
    # Clip where the crop overhangs the image (crop_pct > 1 pads rather than crops).
    ys, xs = slice(max(y0, 0), min(y0 + crop_h, height)), slice(max(x0, 0), min(x0 + crop_w, width))
    heat[ys, xs] = resized[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return heat


@dataclass
class Explanation:
    """A Grad-CAM result: the heat map (H, W) in [0, 1] at the image's own size, and what it explains."""

    image: Image.Image
    heatmap: np.ndarray
    class_index: int
    label: str
    score: float
    crop: tuple[float, float, float, float]


def explain(classifier: Any, image: str | os.PathLike | Image.Image, class_name: str | None = None) -> Explanation:
    """Grad-CAM of `classifier` (a `resnetlab.predict.Classifier`) on one image, for its prediction or `class_name`."""
    from resnetlab.predict import _open

    if not hasattr(classifier, "model") or not hasattr(classifier.model, "stages"):
        raise ResnetlabError("Grad-CAM needs the PyTorch model: pass a run folder or checkpoint, not an exported file")
    class_index = None
    if class_name is not None:
        if class_name not in classifier.classes:
            raise ResnetlabError(f"--class {class_name!r}: not a class of this model; choose from {classifier.classes}")
        class_index = classifier.classes.index(class_name)
    pil = _open(image)  # full size, for the picture
    x = classifier.preprocess(image)[None]  # (1, C, H, W), decoded exactly as `predict` decodes it
    # The label and score come from the classifier's own forward pass (its precision, e.g. bf16), so they are the
    # numbers `predict` reports; Grad-CAM's pass runs in fp32 for clean gradients and differs in the last digits.
    probs = classifier.predict_scores(x)[0].exp()  # the call `predict` makes for its scores
    if class_index is None:
        class_index = int(probs.argmax())
    cam, index, _ = grad_cam(classifier.model, x, class_index)
    return Explanation(
        image=pil,
        heatmap=cam_to_image(cam, pil.size, classifier.default_cfg),
        class_index=index,
        label=classifier.classes[index],
        score=float(probs[index]),
        crop=crop_box(*pil.size, classifier.default_cfg),
    )


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The heat map in the `jet` colour map blended over the image (RGB, the image's size)."""
    from matplotlib import colormaps

    colored = (colormaps["jet"](heatmap)[..., :3] * 255).astype(np.float32)  # (H, W, 3)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray(((1 - alpha) * base + alpha * colored).round().astype(np.uint8))


def save_explanation(result: Explanation, path: str | os.PathLike) -> Path:
    """A PNG with the photo and its Grad-CAM overlay side by side; the area the model did not see is dimmed."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from resnetlab.report.fonts import configure_fonts

    configure_fonts([result.label])
    blended = np.asarray(overlay(result.image, result.heatmap), dtype=np.float32)
    left, top, right, bottom = result.crop
    outside = np.ones(result.heatmap.shape, dtype=bool)
    outside[max(0, round(top)) : max(0, round(bottom)), max(0, round(left)) : max(0, round(right))] = False
    blended[outside] = np.asarray(result.image.convert("RGB"), dtype=np.float32)[outside] * 0.4
    aspect = result.image.height / result.image.width
    # A 10x2000 strip gave a 990x95,541 px picture and a 3000x10 one panels 2 px tall: beyond 1:5 and 3:1 the panels
    # keep those bounds and the image stretches to them.
    shown = min(max(aspect, 0.2), 3.0)
    stretch = "auto" if shown != aspect else None
    fig = Figure(figsize=(10, 5 * shown + 0.8))
    ax_img, ax_cam = fig.subplots(1, 2)
    ax_img.imshow(result.image, aspect=stretch)
    ax_img.set_title("image")
    ax_cam.imshow(blended.astype(np.uint8), aspect=stretch)
    ax_cam.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, ec="white", lw=1, ls="--"))
    ax_cam.set_title(f"Grad-CAM: {result.label} ({result.score:.2f})")
    for ax in (ax_img, ax_cam):
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path
