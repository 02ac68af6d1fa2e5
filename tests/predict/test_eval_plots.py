"""Evaluation plots: files written with content, and non-Latin class names drawn as text, not boxes."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
from PIL import Image

from resnetlab.report.eval_plots import plot_confusion_matrix, plot_mistakes, plot_prediction_grid

CHINESE = ["纸板", "玻璃", "金属"]


def _has_cjk_font() -> bool:
    from matplotlib import font_manager

    return any(
        any(word in f.name for word in ("CJK", "WenQuanYi", "Hei", "Droid Sans Fallback", "Noto Sans SC"))
        for f in font_manager.fontManager.ttflist
    )


def test_plots_with_chinese_class_names(tmp_path, tiny_data):
    if importlib.util.find_spec("resnetlab.report.fonts") is None or not _has_cjk_font():
        pytest.skip("needs resnetlab.report.fonts and an installed CJK font")
    photos = sorted(tiny_data.rglob("*.jpg"))[:4]
    probs = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6], [0.05, 0.05, 0.9]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion_matrix([[3, 1, 0], [0, 2, 2], [1, 0, 5]], CHINESE, tmp_path / "cm.png")
        plot_mistakes(photos, [0, 0, 1, 2], probs, CHINESE, tmp_path / "mistakes.png")
    missing = [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert not missing, missing[:3]
    for name in ("cm.png", "mistakes.png"):
        with Image.open(tmp_path / name) as im:
            assert im.width > 200


def test_mistakes_picks_the_most_confident_wrong_ones(tmp_path, tiny_data):
    photos = sorted(tiny_data.rglob("*.jpg"))[:5]
    labels = [0, 1, 2, 0, 1]
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.75, 0.05], [0.1, 0.8, 0.1]])
    path = plot_mistakes(photos, labels, probs, ["a", "b", "c"], tmp_path / "m.png", max_images=2)
    with Image.open(path) as im:
        two_panels = im.size
    path_all = plot_mistakes(photos, labels, probs, ["a", "b", "c"], tmp_path / "m_all.png")
    with Image.open(path_all) as im:
        assert im.width > two_panels[0]  # 3 mistakes drawn side by side, wider than 2
    none = plot_mistakes(photos[:1], [0], probs[:1], ["a", "b", "c"], tmp_path / "none.png")
    assert none.stat().st_size > 1000


def test_prediction_grid_with_errors(tmp_path, tiny_data):
    photos = sorted(tiny_data.rglob("*.jpg"))[:3]
    results = [{"path": str(p), "predictions": [{"label": "glass", "score": 0.5}]} for p in photos]
    results.append({"path": str(tmp_path / "gone.jpg"), "error": "no such file"})
    path = plot_prediction_grid(results, tmp_path / "grid.png")
    with Image.open(path) as im:
        assert im.width > 300 and len(np.unique(np.asarray(im.convert("L")))) > 20
