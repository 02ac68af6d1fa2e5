"""Sample grid: N thumbnails per class, one row per class, each row titled with its class name."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import ImageOps

from resnetlab.data.images import ImageError, open_image
from resnetlab.report.fonts import configure_fonts


def save_sample_grid(
    samples_by_class: dict[str, list[os.PathLike]],
    path: str | os.PathLike,
    thumb_px: int = 160,
    title: str | None = None,
) -> Path:
    """Write a PNG grid of the given images (rows: classes in the given order); unreadable images show as blanks."""
    path = Path(path)
    configure_fonts([*samples_by_class, title or ""])
    rows = max(1, len(samples_by_class))
    cols = max([1, *(len(v) for v in samples_by_class.values())])
    inch = thumb_px / 100
    fig = Figure(figsize=(cols * inch, rows * (inch + 0.3) + (0.4 if title else 0)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (name, paths) in enumerate(samples_by_class.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(paths):
                try:
                    # Square center crops fill the cells evenly whatever the photos' aspect.
                    image = ImageOps.fit(open_image(paths[c], draft_size=thumb_px), (thumb_px, thumb_px))
                    ax.imshow(image)
                except ImageError:
                    ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.axis("off")
        axes[r][0].set_title(name, loc="left", fontsize=11)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
