"""Training curves: accuracy and loss per epoch, train against validation, in one PNG.

Drawn on a bare `matplotlib.figure.Figure` (Agg canvas, no pyplot state), so it is safe from any thread and never
opens a window.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from resnetlab.report.fonts import configure_fonts


def _series(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows]


def plot_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Save accuracy (left) and loss (right) against epoch for `history.csv` rows; marks the best val epoch."""
    configure_fonts([title])
    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, label in ((axes[0], "acc", "accuracy"), (axes[1], "loss", "loss")):
        ax.plot(epochs, _series(rows, f"train_{metric}"), "o-", label="train", markersize=3)
        ax.plot(epochs, _series(rows, f"val_{metric}"), "s-", label="val", markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5 on a short run's axis
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    val_acc = _series(rows, "val_acc")
    if val_acc and not all(math.isnan(v) for v in val_acc):
        best = max(range(len(val_acc)), key=lambda i: -math.inf if math.isnan(val_acc[i]) else val_acc[i])
        axes[0].axvline(epochs[best], color="grey", linestyle=":", linewidth=1)
        axes[0].set_title(f"best val accuracy {val_acc[best]:.3f} (epoch {epochs[best]})")
    axes[0].set_ylim(0, 1.02)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path)
    return path
