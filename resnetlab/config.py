"""`TrainConfig`: the one typed description of a training run.

Every `resnetlab train` flag is a field here (the CLI is generated from these fields), every field may appear in a
YAML file passed with `--config`, and the resolved config is saved to the run folder as `config.yaml`.
Precedence: dataclass defaults < YAML file < flags given explicitly on the command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnetlab.errors import ResnetlabError

# Choices shared by the CLI (argparse `choices`) and by validation of YAML values.
CHOICES: dict[str, tuple[str, ...]] = {
    "opt": ("auto", "sgd", "adam", "adamw", "muon"),
    "sched": ("cosine", "step", "multistep", "plateau", "onecycle", "constant"),
    "mode": ("finetune", "frozen", "staged"),
    "class_weights": ("none", "auto"),
    "cache": ("auto", "ram", "none"),
    "augment": ("none", "light", "default", "strong", "cifar"),
    "amp": ("auto", "bf16", "fp16", "off"),
    "bn_stats": ("epoch", "running"),
}

# Allowed ranges of numeric options: (low, low included, high, high included); None = unbounded. A value of None
# (an option left to its default) is not checked. Lists are checked element by element.
BOUNDS: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "epochs": (1, True, None, False),
    "batch_size": (1, True, None, False),
    "img_size": (8, True, None, False),
    "val_fraction": (0, True, 1, False),
    "workers": (0, True, None, False),
    "mixup": (0, True, None, False),
    "cutmix": (0, True, None, False),
    "dropout": (0, True, 1, False),
    "head": (1, True, None, False),
    "freeze_epochs": (0, True, None, False),
    "lr_mult": (0, False, None, False),
    "lr": (0, True, None, False),
    "wd": (0, True, None, False),
    "momentum": (0, True, 1, False),
    "warmup_epochs": (0, True, None, False),
    "min_lr_ratio": (0, True, 1, True),
    "step_size": (1, True, None, False),
    "milestones": (1, True, None, False),
    "gamma": (0, False, 1, True),
    "label_smoothing": (0, True, 1, False),
    "aux_weight": (0, True, None, False),
    "grad_clip": (0, False, None, False),
    "patience": (0, True, None, False),
    "seed": (0, True, None, False),
}


def _out_of_bounds(key: str, value: float) -> str | None:
    """The error for `value` of option `key` outside BOUNDS, e.g. 'label_smoothing must be in [0, 1), got 1.5'."""
    low, low_in, high, high_in = BOUNDS[key]
    if (low is None or value > low or (low_in and value == low)) and (
        high is None or value < high or (high_in and value == high)
    ):
        return None
    if high is None:
        return f"{key} must be {'at least' if low_in else 'above'} {low}, got {value}"
    return f"{key} must be in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}, got {value}"


# Base learning rates at a global batch of 64 (scaled linearly for SGD, by the square root for Adam-style optimisers).
# AdamW 1e-3 (2e-3 until 2026-11-27): over 5 TrashNet seeds 0.815 against 0.803 (never worse), over 5 hymenoptera
# seeds 0.714 against 0.698 (benchmarks/RESULTS.md).
# Muon's updates are rescaled to AdamW's RMS (engine/muon.py), so AdamW's decay carries over; its rate is twice
# AdamW's (2026-11-27): TrashNet seeds 0-4 0.871 against 0.856 at 1e-3 (better on every seed), hymenoptera seeds 0-4
# 0.723 against 0.727 (within noise). Doubling the decay instead (wd 0.1) gave 0.868 over seeds 0-2, both 0.869;
# 3e-3 tied on TrashNet (0.873) but lost 3 points on hymenoptera and 2 on the demo data.
BASE_LR: dict[str, float] = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "muon": 2e-3}
# Weight decay per optimizer: AdamW's decoupled decay and SGD's L2 penalty differ by ~100x in useful size (SGD at
# AdamW's 0.05 barely trains: 0.50 train accuracy after 15 of 20 epochs on the TrashNet recipe).
BASE_WD: dict[str, float] = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.05, "muon": 0.05}
REFERENCE_BATCH = 64


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field carrying its CLI help text (mutable defaults through a factory)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


# Options naming a folder; `pretrained` may name a file too (or "imagenet").
PATH_FIELDS = ("data", "val_dir", "split_file", "out", "resume")


@dataclass
class TrainConfig:
    """All settings of `resnetlab train`; defaults are the from-scratch recipe measured in benchmarks/RESULTS.md."""

    # --- data
    data: str | None = _f(None, "image folder with one sub-folder per class, or cifar10 (downloaded on first use)")
    val_fraction: float = _f(0.2, "fraction of each class held out for validation (ignored with --val-dir)")
    val_dir: str | None = _f(None, "separate validation folder with the same class sub-folders")
    split_file: str | None = _f(
        None, "a frozen split's file list (`resnetlab data split`: FILE_train.txt, with its _val/_test beside it)"
    )
    img_size: int | None = _f(
        None, "training and evaluation resolution; None means the model's own (224 for ImageNet models)"
    )
    keep_aspect: bool = _f(True, "evaluate whole photos at their common aspect ratio instead of a square centre crop")
    augment: str = _f(
        "default",
        "train augmentation: none, light (mild crop, flip), default (crop, flip), strong (+TrivialAugment), "
        "cifar (pad 4, random crop, flip)",
    )
    mixup: float = _f(0.0, "mixup alpha (0 = off)")
    cutmix: float = _f(0.0, "cutmix alpha (0 = off)")
    cache: str = _f("auto", "keep decoded images in RAM: auto (when they fit), ram, none")
    workers: int | None = _f(
        None, "loader worker processes (default: 0 for CPU training from a full RAM cache, else 1 per CPU, max 4)"
    )
    class_weights: str = _f("none", "weight the loss by inverse class frequency: none or auto")
    balanced_sampler: bool = _f(False, "draw training images with class-balanced probabilities")
    # --- model
    model: str = _f("resnet18", "registered model name (see `resnetlab models`)")
    pretrained: str | None = _f(None, "start from weights: imagenet or a weights file")
    mode: str = _f("finetune", "finetune (all layers), frozen (head only), staged (head first, then all)")
    head: list[int] = _f([], "hidden sizes of an MLP head replacing the classifier, e.g. 512,256")
    dropout: float = _f(0.0, "dropout before the classifier (and in the MLP head)")
    freeze_epochs: int = _f(1, "staged mode: epochs training only the head before unfreezing")
    lr_mult: float = _f(
        100.0,
        "staged mode, once unfrozen: the head trains at lr/2 (fastai's fine_tune), the first stage at"
        " lr/2/lr_mult, the stages between rising geometrically",
    )
    freeze_bn: bool = _f(False, "keep every BatchNorm in eval mode (frozen statistics, affine still trains)")
    bn_stats: str = _f(
        "epoch",
        "running BatchNorm statistics: epoch (each epoch's moving average starts afresh, bias-corrected as Adam's "
        "moments) or running (PyTorch's one moving average across epochs)",
    )
    # --- optimisation
    epochs: int = _f(20, "number of epochs (with --time: at most this many)")
    time: str | None = _f(
        None,
        "wall-clock budget for the whole run, e.g. 90s, 20m, 1.5h, 1h30m, 1:30:00: after each epoch the run plans "
        "how many of --epochs fit and shortens the LR schedule to end there (default: none)",
    )
    batch_size: int = _f(64, "global batch size (split across processes under torchrun)")
    opt: str = _f("auto", "optimizer: sgd, adam, adamw, muon; auto = muon from scratch, adamw with --pretrained")
    lr: float | None = _f(None, "peak learning rate (default: per optimizer, scaled with the batch size)")
    wd: float | None = _f(
        None, "weight decay, never applied to norm layers and biases (default: per optimizer, 0.05 adamw, 5e-4 sgd)"
    )
    momentum: float = _f(0.9, "SGD momentum (Muon keeps its own 0.95)")
    nesterov: bool = _f(True, "SGD: Nesterov momentum")
    sched: str = _f("cosine", "learning-rate schedule: cosine, step, multistep, plateau, onecycle, constant")
    warmup_epochs: float = _f(1.0, "linear warm-up length in epochs (fractions allowed)")
    min_lr_ratio: float = _f(0.01, "cosine: final learning rate as a fraction of the peak")
    step_size: int | None = _f(None, "step schedule: epochs between decays (default: a third of the epochs)")
    milestones: list[int] = _f([], "multistep schedule: epochs after which the LR is multiplied by gamma")
    gamma: float = _f(0.1, "step, multistep and plateau schedules: decay factor")
    label_smoothing: float = _f(0.1, "label smoothing of the cross-entropy loss")
    ema: float = _f(0.0, "keep an exponential moving average of the weights with this decay (e.g. 0.998; 0 = off)")
    aux_weight: float = _f(
        0.3, "weight of each GoogLeNet auxiliary loss (the logged train loss includes them; val loss does not)"
    )
    grad_clip: float | None = _f(None, "clip the gradient norm to this value")
    patience: int | None = _f(
        None, "stop after this many epochs without a better validation accuracy (default: none: never; 0: never)"
    )
    seed: int = _f(0, "random seed (data split, initialisation, augmentation, order)")
    # --- speed and devices
    device: str | None = _f(None, "cpu, cuda, cuda:1 (default: CUDA when available)")
    amp: str = _f("auto", "autocast: auto (bf16 on capable CPUs, bf16/fp16 on CUDA), bf16, fp16, off")
    channels_last: bool | None = _f(None, "channels_last memory format (default: on)")
    compile: bool = _f(False, "torch.compile the model")
    sync_bn: bool = _f(False, "SyncBatchNorm across processes under torchrun (CUDA)")
    cache_features: bool = _f(True, "frozen mode without random augmentation: compute backbone features once")
    # --- output
    out: str | None = _f(None, "run folder (default: runs/<data>-<model>, numbered when it exists)")
    resume: str | None = _f(None, "continue the run in this folder from its last.pt")
    progress: bool | None = _f(None, "show a progress bar (default: when stdout is a terminal)")

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a plain dict; unknown keys fail naming the closest valid ones. Dashes in keys are accepted."""
        return cls().merge(values, source=source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(load_yaml(path), source=str(path))

    def merge(self, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """A copy with `values` applied on top (later layers win); values are checked and coerced to field types."""
        names = self.field_names()
        hints = typing.get_type_hints(type(self))
        updates = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in names:
                # Close to an option or to another tool's name for one ("lerning_rate" -> learning_rate -> lr).
                near = difflib.get_close_matches(key.lower(), [*names, *KEY_ALIASES], n=3, cutoff=0.5)
                close = list(dict.fromkeys(KEY_ALIASES.get(k, k) for k in near))
                hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(names)}"
                raise ResnetlabError(f"{source}: unknown key {raw_key!r}{hint}")
            updates[key] = _coerce(key, value, hints[key], source)
        try:
            return dataclasses.replace(self, **updates).validate()
        except ResnetlabError as exc:  # earlier layers passed, so the value at fault came from this one
            if Path(source).suffix.lower() not in (".yaml", ".yml"):  # the command line, a dict, a recipe
                raise
            raise ResnetlabError(f"{source}: {exc}") from None

    def validate(self) -> TrainConfig:
        for key, choices in CHOICES.items():
            value = getattr(self, key)
            if value not in choices:
                raise ResnetlabError(f"{key} {value!r}: choose one of {', '.join(choices)}")
        for key in BOUNDS:
            value = getattr(self, key)
            for item in value if isinstance(value, list) else [] if value is None else [value]:
                if message := _out_of_bounds(key, item):
                    raise ResnetlabError(message)
        if self.time is not None:
            parse_duration(self.time, "time")
        if self.ema and not 0.0 < self.ema < 1.0:
            raise ResnetlabError(f"ema {self.ema}: a decay between 0 and 1 (e.g. 0.998), or 0 for no averaging")
        return self

    # ------------------------------------------------------------------ derived values
    def resolved_lr(self) -> float:
        """`lr`, or the optimizer's base rate scaled to the batch size (a quarter of it to fine-tune pretrained)."""
        if self.lr is not None:
            return self.lr
        ratio = self.batch_size / REFERENCE_BATCH
        opt = self.resolved_opt()
        lr = BASE_LR[opt] * (ratio if opt == "sgd" else math.sqrt(ratio))
        if self.pretrained and self.mode == "finetune":
            lr *= 0.25  # pretrained features need smaller steps than a fresh network
        return lr

    def time_budget_s(self) -> float | None:
        """`time` in seconds, or None without a budget."""
        return None if self.time is None else parse_duration(self.time, "time")

    def resolved_wd(self) -> float:
        """`wd`, or the optimizer's own default (`BASE_WD`)."""
        return BASE_WD[self.resolved_opt()] if self.wd is None else self.wd

    def resolved_opt(self) -> str:
        """`opt`, with `auto` resolved: Muon from scratch, AdamW to adapt pretrained weights (see BASE_LR)."""
        if self.opt != "auto":
            return self.opt
        return "adamw" if self.pretrained else "muon"

    # ------------------------------------------------------------------ output
    def with_absolute_paths(self) -> TrainConfig:
        """The same config with its folders and files as absolute paths, as the run folder's config.yaml keeps them:
        `--resume` then works from any directory (the path as typed was relative to where the run started)."""
        changes = {k: str(Path(v).resolve()) for k in PATH_FIELDS if (v := getattr(self, k))}
        if self.pretrained and Path(self.pretrained).exists():  # "imagenet" is a name, not a file
            changes["pretrained"] = str(Path(self.pretrained).resolve())
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with clear errors (missing file, bad syntax, not a mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ResnetlabError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ResnetlabError(f"{path}: not valid YAML{where}; fix the syntax") from exc
    if not isinstance(data, dict):
        raise ResnetlabError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)h)?(?:(\d+(?:\.\d*)?|\.\d+)m)?(?:(\d+(?:\.\d*)?|\.\d+)s)?")
_CLOCK = re.compile(r"(?:(\d+):)?(\d+):(\d\d)")  # H:MM:SS or M:SS, as schedulers (SLURM) write limits


def parse_duration(value: str, option: str = "time") -> float:
    """`"90s"`, `"20m"`, `"1.5h"`, `"1h30m"`, `"1:30:00"` -> seconds. A unit is required: a bare number means hours
    to Ultralytics users and minutes to others."""
    text = str(value).strip().lower().replace(" ", "")
    seconds = None
    if (m := _DURATION.fullmatch(text)) and any(m.groups()):
        seconds = sum(float(part) * unit for part, unit in zip(m.groups(), (3600, 60, 1)) if part)
    elif m := _CLOCK.fullmatch(text):
        hours, minutes, secs = (int(part or 0) for part in m.groups())
        seconds = float(hours * 3600 + minutes * 60 + secs) if secs < 60 and (hours == 0 or minutes < 60) else None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ResnetlabError(
            f"{option} {value!r}: give a positive duration with a unit, e.g. 90s, 20m, 1.5h or 1h30m (or H:MM:SS)"
        )
    return seconds


def parse_int_list(value: Any) -> list[int]:
    """`"512,256"`, `[512, 256]`, `512` or `""` -> list of ints; anything else (`[512.7]`, `[true]`) a ValueError."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(value)
    return [_strict_int(v) for v in value]


def _strict_int(value: Any) -> int:
    """An int from an int, an integral float or a numeric string; True, 1.9 or [1] are refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


# Names other tools use for resnetlab's options: suggested when an unknown key is one of them (Keras, timm, HF,
# Ultralytics spellings).
KEY_ALIASES = {
    "learning_rate": "lr",
    "lr0": "lr",
    "weight_decay": "wd",
    "optimizer": "opt",
    "scheduler": "sched",
    "lr_scheduler": "sched",
    "imgsz": "img_size",
    "image_size": "img_size",
    "input_size": "img_size",
    "batch": "batch_size",
    "num_workers": "workers",
    "early_stopping": "patience",
    "warmup": "warmup_epochs",
    "arch": "model",
}


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, failing with one line that names the key."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = (
        next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) is not list else hint
    )
    if value is None:
        if optional:
            return None
        raise ResnetlabError(f"{source}: {key} cannot be empty")
    try:
        if typing.get_origin(base) is list:
            return parse_int_list(value)
        if base is bool:
            if isinstance(value, str):
                lowered = value.lower()
                if lowered not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                    raise ValueError(value)
                return lowered in ("true", "yes", "1", "on")
            if isinstance(value, bool) or value in (0, 1):  # YAML's true/false, or 0/1
                return bool(value)
            raise ValueError(value)
        if base is int:
            return _strict_int(value)
        # YAML gives bools, lists and mappings as such: str() or float() of them would pass a nonsense value on.
        if isinstance(value, (bool, list, tuple, dict)):
            raise ValueError(value)
        if base is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        name = "a list of integers" if typing.get_origin(base) is list else getattr(base, "__name__", str(base))
        raise ResnetlabError(f"{source}: {key} expects {name}, got {value!r}") from None
