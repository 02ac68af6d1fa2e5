"""Evaluation and prediction plots: confusion matrix, most confident mistakes, a grid of predictions.

Figures are drawn on `matplotlib.figure.Figure` directly (Agg canvas, no pyplot global state), so they are safe to
make from any thread and never open a window. Class names in any script render through `configure_fonts`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from resnetlab.report.fonts import configure_fonts

THUMB_PX = 160  # thumbnails are shrunk to this before plotting: small PNGs, fast drawing


def _thumbnail(image: str | os.PathLike | Image.Image) -> Image.Image | None:
    """A small RGB copy of the image, or None when it cannot be read (the panel then says so)."""
    try:
        if isinstance(image, Image.Image):
            img = image.convert("RGB")
        else:
            from resnetlab.data.images import open_image

            img = open_image(image)
    except Exception:  # a plot must not fail because one file went bad since prediction
        return None
    img = img.copy()
    img.thumbnail((THUMB_PX, THUMB_PX))
    return img


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _matrix_panel(ax: Any, matrix: np.ndarray, classes: Sequence[str], title: str, fmt: str) -> None:
    k = len(classes)
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(float(matrix.max()), 1e-9))
    ax.set_title(title)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=list(classes))
    if k <= 30:  # beyond that the numbers are unreadable; colour alone tells the story
        threshold = matrix.max() / 2
        for i in range(k):
            for j in range(k):
                color = "white" if matrix[i, j] > threshold else "black"
                ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center", color=color, fontsize=8)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def plot_confusion_matrix(cm: Any, classes: Sequence[str], path: str | os.PathLike) -> Path:
    """Two panels: raw counts, and rows normalised to sum to 1 (each row is that class's recall breakdown)."""
    configure_fonts(classes)
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = max(4.0, 0.45 * len(classes) + 2.5)
    fig = Figure(figsize=(2 * side + 1, side))
    left, right = fig.subplots(1, 2)
    _matrix_panel(left, cm, classes, "counts", "d")
    _matrix_panel(right, normalised, classes, "normalised by true class", ".2f")
    fig.tight_layout()
    return _save(fig, path)


def _image_grid(
    panels: Sequence[tuple[str | os.PathLike | Image.Image, str, str]],
    path: str | os.PathLike,
    suptitle: str | None = None,
    cols: int | None = None,
) -> Path:
    """Images in a grid, each titled; `panels` holds `(image, title, title colour)`."""
    n = max(1, len(panels))
    cols = cols or min(n, 4 if n <= 8 else 6)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.6 * cols, 2.9 * rows + (0.4 if suptitle else 0)))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    if not panels:
        axes[0].text(0.5, 0.5, "nothing to show", ha="center", va="center", fontsize=12)
    for ax, (image, title, color) in zip(axes, panels):
        thumb = _thumbnail(image)
        if thumb is None:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", color="gray")
        else:
            ax.imshow(thumb)
        ax.set_title(title, fontsize=9, color=color)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return _save(fig, path)


def plot_mistakes(
    images: Sequence[str | os.PathLike | Image.Image],
    labels: Any,
    probs: Any,
    classes: Sequence[str],
    path: str | os.PathLike,
    max_images: int = 16,
) -> Path:
    """The most confident wrong predictions, each titled `true -> predicted (p)`; a note when there are none.

    `labels` (N,) are the true indices and `probs` (N, K) the predicted probabilities for `images`.
    """
    configure_fonts(classes)
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(axis=1) if len(labels) else np.zeros(0, dtype=np.int64)
    wrong = np.flatnonzero(preds != labels)
    confidence = probs[wrong, preds[wrong]] if wrong.size else np.zeros(0)
    order = wrong[np.argsort(-confidence, kind="stable")][:max_images]
    panels = [
        (images[i], f"{classes[labels[i]]} -> {classes[preds[i]]} ({probs[i, preds[i]]:.2f})", "firebrick")
        for i in order
    ]
    title = f"most confident mistakes ({len(order)} of {wrong.size} wrong)" if wrong.size else "no mistakes"
    return _image_grid(panels, path, suptitle=title)


def plot_prediction_grid(results: Sequence[dict[str, Any]], path: str | os.PathLike, max_images: int = 48) -> Path:
    """`predict --grid`: each image titled with its top prediction (or its error), from `predict_paths` results."""
    shown = list(results)[:max_images]
    configure_fonts([p["label"] for r in shown for p in r.get("predictions", [])])
    panels = []
    for r in shown:
        if "error" in r:
            panels.append((r["path"], Path(r["path"]).name, "gray"))  # the panel itself says "unreadable"
            continue
        best = r["predictions"][0]
        panels.append((r["path"], f"{best['label']} ({best['score']:.2f})", "black"))
    more = len(results) - len(shown)
    return _image_grid(panels, path, suptitle=f"first {len(shown)} of {len(results)} images" if more > 0 else None)
