"""TrainConfig: precedence defaults < YAML < explicit flags, YAML errors, round trip."""

from __future__ import annotations

import pytest

from resnetlab.cli import build_parser
from resnetlab.commands.train import resolve_config
from resnetlab.config import TrainConfig
from resnetlab.errors import ResnetlabError


def _resolve(argv: list[str]) -> TrainConfig:
    return resolve_config(build_parser().parse_args(["train", *argv]))


def test_every_field_is_a_flag():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions}
    assert set(TrainConfig.field_names()) <= dests


def test_help_states_each_default_once():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train._actions}
    assert helps["wd"].endswith("(default: per optimizer, 0.05 adamw, 5e-4 sgd)")
    assert "None" not in helps["lr"] and "None" not in helps["wd"]
    assert helps["epochs"].endswith("(default: 20)")


def test_precedence_defaults_yaml_cli(tmp_path):
    cfg_file = tmp_path / "recipe.yaml"
    cfg_file.write_text("model: resnet34\nlr: 0.01\nepochs: 7\nhead: [512, 256]\nbalanced_sampler: true\n")
    cfg = _resolve(["data", "--config", str(cfg_file), "--lr", "0.5", "--no-balanced-sampler"])
    assert cfg.lr == 0.5  # flag beats YAML
    assert cfg.balanced_sampler is False  # an explicit --no-... beats YAML too
    assert cfg.model == "resnet34" and cfg.epochs == 7 and cfg.head == [512, 256]  # YAML beats defaults
    assert cfg.batch_size == TrainConfig().batch_size  # untouched default
    assert cfg.data == "data"


def test_flag_not_given_keeps_yaml_value(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("batch-size: 16\nopt: sgd\n")  # dashes accepted as in flags
    cfg = _resolve(["--config", str(cfg_file), "--head", "128,64"])
    assert cfg.batch_size == 16 and cfg.opt == "sgd" and cfg.head == [128, 64]


def test_unknown_yaml_key_names_closest(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text("learning_rate: 0.1\nepoch: 3\n")
    with pytest.raises(ResnetlabError) as err:
        TrainConfig.from_yaml(cfg_file)
    msg = str(err.value)
    assert "\n" not in msg and "bad.yaml" in msg and "'learning_rate'" in msg


def test_typo_suggestion():
    with pytest.raises(ResnetlabError, match="did you mean epochs"):
        TrainConfig.from_dict({"epoch": 3})
    # Other tools' names for an option, and typos of them, point at resnetlab's.
    for key in ("learning_rate", "lerning_rate", "lr0"):
        with pytest.raises(ResnetlabError, match=f"unknown key '{key}'; did you mean lr[,?]"):
            TrainConfig.from_dict({key: 0.1})
    with pytest.raises(ResnetlabError, match="did you mean img_size"):
        TrainConfig.from_dict({"imgsz": 64})


def test_yaml_values_that_still_coerce():
    cfg = TrainConfig.from_dict({"epochs": 3.0, "balanced_sampler": 1, "head": "512, 256", "seed": "7", "lr": 1})
    assert (cfg.epochs, cfg.balanced_sampler, cfg.head, cfg.seed, cfg.lr) == (3, True, [512, 256], 7, 1.0)


def test_a_bad_value_in_a_yaml_file_names_the_file(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("sched: Cosine\n")
    with pytest.raises(ResnetlabError, match=r"run.yaml: sched 'Cosine': choose one of cosine"):
        TrainConfig.from_yaml(cfg_file)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"epochs": "many"}, "epochs expects int"),
        ({"opt": "lamb"}, "opt 'lamb'"),
        ({"batch_size": 0}, "batch_size"),
        ({"ema": 1.5}, "ema 1.5: a decay between 0 and 1"),
        # Each of these once reached PyTorch and ended in its traceback, or trained on a meaningless value.
        ({"workers": -1}, r"workers must be at least 0, got -1"),
        ({"label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\), got 1.5"),
        ({"mixup": -1}, r"mixup must be at least 0, got -1.0"),
        ({"lr": -1}, r"lr must be at least 0, got -1.0"),
        ({"momentum": 2}, r"momentum must be in \[0, 1\), got 2.0"),
        ({"grad_clip": 0}, r"grad_clip must be above 0, got 0.0"),
        ({"gamma": 0}, r"gamma must be in \(0, 1\], got 0.0"),
        ({"milestones": [5, 0]}, r"milestones must be at least 1, got 0"),
        ({"seed": -1}, r"seed must be at least 0, got -1"),
        ({"img_size": 4}, r"img_size must be at least 8, got 4"),
        ({"head": [512, 0]}, r"head must be at least 1, got 0"),  # an empty layer once crashed in BatchNorm
        ({"head": -5}, r"head must be at least 1, got -5"),
        # YAML's own types are not cast into nonsense: true is no epoch count, 512.7 no width, a list no folder.
        ({"epochs": True}, r"epochs expects int, got True"),
        ({"epochs": 2.5}, r"epochs expects int, got 2.5"),
        ({"balanced_sampler": [1]}, r"balanced_sampler expects bool, got \[1\]"),
        ({"head": [512.7]}, r"head expects a list of integers, got \[512.7\]"),
        ({"milestones": [1.9]}, r"milestones expects a list of integers"),
        ({"head": [512, "abc"]}, r"head expects a list of integers"),
        ({"data": ["tn"]}, r"data expects str, got \['tn'\]"),
        ({"model": {"name": "resnet18"}}, r"model expects str"),
        ({"lr": True}, r"lr expects float, got True"),
    ],
)
def test_bad_values(values, needle):
    with pytest.raises(ResnetlabError, match=needle):
        TrainConfig.from_dict(values)


def test_bounds_admit_their_own_limits():
    from resnetlab.config import BOUNDS

    for key, (low, low_in, high, high_in) in BOUNDS.items():
        value = low if low_in else high if high_in else None
        if value is not None:
            TrainConfig.from_dict({key: [value] if key == "milestones" else value})  # raises if refused
    # Options left to their defaults (None) are not checked; zero learning rate and patience stay allowed.
    assert TrainConfig.from_dict({"lr": 0.0, "patience": 0, "grad_clip": None}).lr == 0.0


def test_bad_yaml_syntax(tmp_path):
    cfg_file = tmp_path / "broken.yaml"
    cfg_file.write_text("lr: [0.1\n")
    with pytest.raises(ResnetlabError, match="not valid YAML"):
        TrainConfig.from_yaml(cfg_file)


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig.from_dict({"data": "x", "head": "512,256", "lr": 3e-3, "channels_last": False})
    cfg.to_yaml(tmp_path / "config.yaml")
    assert TrainConfig.from_yaml(tmp_path / "config.yaml") == cfg


def test_weight_decay_defaults_per_optimizer():
    # SGD's L2 penalty at AdamW's decoupled 0.05 would cripple training: each optimizer has its own default.
    assert TrainConfig().resolved_wd() == 0.05
    assert TrainConfig(opt="sgd").resolved_wd() == 5e-4
    assert TrainConfig(opt="adam").resolved_wd() == 0.0
    assert TrainConfig.from_dict({"opt": "sgd", "wd": 0.01}).resolved_wd() == 0.01
    with pytest.raises(ResnetlabError, match="wd must be at least 0"):
        TrainConfig.from_dict({"wd": -1})


def test_auto_lr_scales_with_batch():
    assert TrainConfig(opt="sgd", batch_size=128).resolved_lr() == pytest.approx(0.2)
    assert TrainConfig(opt="adamw", batch_size=256).resolved_lr() == pytest.approx(2e-3)
    assert TrainConfig(lr=0.3).resolved_lr() == 0.3
