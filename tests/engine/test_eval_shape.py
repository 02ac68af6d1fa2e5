"""The eval input keeps the photos' common aspect ratio (whole image, no crop) and stays square otherwise."""

from __future__ import annotations

from resnetlab.config import TrainConfig
from resnetlab.engine.fit import build_model, eval_shape


def test_landscape_portrait_square_and_mixed_sets():
    assert eval_shape([(384, 288)] * 10, 96) == (96, 128)  # 4:3 landscape: short side 96, long side 128
    assert eval_shape([(288, 384)] * 10, 96) == (128, 96)  # portrait
    assert eval_shape([(500, 480)] * 10, 96) is None  # nearly square: plain square crop
    assert eval_shape([(400, 300)] * 5 + [(300, 400)] * 5, 96) is None  # mixed orientations: no common ratio
    assert eval_shape([], 96) is None


def test_build_model_records_the_eval_shape_in_default_cfg():
    cfg = TrainConfig(model="resnet20", img_size=32)
    model, _ = build_model(cfg, 3, sizes=[(64, 48)] * 4)
    assert model.default_cfg["input_size"] == (3, 32, 40) and model.default_cfg["crop_pct"] == 1.0
    square, _ = build_model(TrainConfig(model="resnet20", img_size=32, keep_aspect=False), 3, sizes=[(64, 48)] * 4)
    assert square.default_cfg["input_size"] == (3, 32, 32)
