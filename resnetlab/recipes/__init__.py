"""Named training recipes: `TrainConfig` overrides that sit above the dataclass defaults and below YAML and flags.

    recipe_for("cifar10", "resnet56")       # -> "cifar_resnet" (the default there), None elsewhere
    recipe_overrides("cifar_resnet", 40)    # -> {"opt": "sgd", "lr": 0.1, ...} for a 40-epoch run

`cifar_resnet` is He et al. 2015, section 4.2: SGD with (plain) momentum 0.9, batch 128, learning rate 0.1 divided by
10 at 32k and 48k of 64k iterations (the engine's `multistep` default: 50% and 75% of the epochs), weight decay 1e-4,
no warm-up (the paper warms up only ResNet-110), 4-pixel padding with a random 32x32 crop and horizontal flips, plain
cross-entropy. 64k iterations of 128 images on the 45k/5k train/val split are 182 epochs.
"""

from __future__ import annotations

from typing import Any

CIFAR_RESNET: dict[str, Any] = {
    "opt": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "wd": 1e-4,
    "batch_size": 128,
    "sched": "multistep",
    "milestones": [],  # empty: the engine divides at 50% and 75% of whatever the final epoch count is
    "gamma": 0.1,
    "warmup_epochs": 0.0,
    "label_smoothing": 0.0,
    "augment": "cifar",  # pad 4, random 32x32 crop, horizontal flip
    "mixup": 0.0,
    "cutmix": 0.0,
    "epochs": 182,
}
RECIPES: dict[str, dict[str, Any]] = {"cifar_resnet": CIFAR_RESNET}

# Data settings a named dataset brings along (the paper's 45k/5k split of CIFAR-10's 50k training images).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {"cifar10": {"val_fraction": 0.1}}


def recipe_for(data: str | None, model: str) -> str | None:
    """The recipe used by default: `cifar_resnet` for a CIFAR ResNet (or plain twin) on the `cifar10` dataset."""
    from resnetlab.data.cifar10 import dataset_name
    from resnetlab.models.cifar_resnet import MODEL_CFGS

    return "cifar_resnet" if dataset_name(data) == "cifar10" and model in MODEL_CFGS else None


def recipe_overrides(name: str, epochs: int | None = None) -> dict[str, Any]:
    """The recipe as values for `TrainConfig.merge`, for a run of `epochs` (default: the recipe's own length)."""
    from resnetlab.errors import ResnetlabError

    if name not in RECIPES:
        raise ResnetlabError(f"recipe {name!r}: choose one of {', '.join(RECIPES)}")
    values = dict(RECIPES[name])
    if epochs is not None:
        values["epochs"] = int(epochs)
    return values
