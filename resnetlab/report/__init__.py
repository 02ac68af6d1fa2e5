"""Pictures: training curves, sample and prediction grids, evaluation plots (matplotlib, Agg)."""

from __future__ import annotations

import os
from pathlib import Path

from resnetlab.errors import ResnetlabError


def picture_path(path: str | os.PathLike, option: str) -> Path:
    """`path` if matplotlib can write a picture of its type, else a one-line error naming `option`.

    Checked before the work that draws it, so a typo'd extension fails at once rather than after a model has run.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    kinds = FigureCanvasAgg.get_supported_filetypes()  # {"png": "Portable Network Graphics", ...}
    if path.suffix.lower().lstrip(".") not in kinds:
        got = f"'{path.suffix}' is not a picture type" if path.suffix else "the name has no picture type"
        raise ResnetlabError(f"{option} {path}: {got}; end it in .png, .jpg, .svg or .pdf")
    return path
