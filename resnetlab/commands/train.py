"""`resnetlab train DIR`: train a classifier on a folder of images (flags generated from `TrainConfig`).

Precedence: TrainConfig defaults < the resumed run's config.yaml (with --resume) < --config FILE.yaml < flags given
on the command line. Every flag defaults to "not given" so a YAML value is only overridden when a flag is typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import typing
from typing import Any

from resnetlab.config import CHOICES, TrainConfig

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  resnetlab train data/trashnet --model resnet18 --img-size 96 --epochs 20
  resnetlab train data/pets --model resnet50 --pretrained imagenet --mode staged --epochs 5
  resnetlab train --config recipe.yaml --lr 3e-3
  resnetlab train --resume runs/trashnet-resnet18 --epochs 30
  resnetlab train data/trashnet --epochs 50 --time 20m
  torchrun --nproc-per-node 4 -m resnetlab train data/trashnet --batch-size 256
"""


def _flag_type(hint: Any) -> Any:
    """`int | None` -> int, `bool | None` -> bool; `list[int]` stays a string ("512,256") parsed by TrainConfig."""
    if typing.get_origin(hint) is list:
        return str
    return next((a for a in typing.get_args(hint) if a is not type(None)), hint)


def _add_field(p: argparse.ArgumentParser, f: dataclasses.Field, hint: Any) -> None:
    flag = "--" + f.name.replace("_", "-")
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    help_text = f.metadata.get("help", "")
    if "(default:" not in help_text:  # fields resolved at run time say what their None means themselves
        shown = (
            "none" if default in ([], None) else ",".join(map(str, default)) if isinstance(default, list) else default
        )
        help_text += f" (default: {shown})"
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
    kind = _flag_type(hint)
    if kind is bool:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if f.name in CHOICES:
        kwargs["choices"] = CHOICES[f.name]
    else:
        kwargs["metavar"] = f.name.upper()
        if kind in (int, float):
            kwargs["type"] = kind
    p.add_argument(flag, **kwargs)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a classifier on a folder of images",
        description=__doc__.splitlines()[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "data",
        nargs="?",
        default=argparse.SUPPRESS,
        help="image folder with one sub-folder per class, or cifar10 (downloaded on first use)",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file (flags override it)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name != "data":
            _add_field(p, f, hints[f.name])
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Layer defaults, the resumed run's config, the YAML file and the explicit flags."""
    from pathlib import Path

    from resnetlab.config import load_yaml
    from resnetlab.errors import ResnetlabError

    cfg = TrainConfig()
    names = set(TrainConfig.field_names())
    explicit = {k: v for k, v in vars(args).items() if k in names}
    if explicit.get("resume"):
        resume = Path(explicit["resume"])
        if resume.is_file() and resume.name == "last.pt":  # Ultralytics users pass RUN/last.pt: the run is its folder
            explicit["resume"] = str(resume.parent)
        elif resume.is_file():
            raise ResnetlabError(
                f"--resume {resume}: a run goes on from its last.pt; pass the run folder {resume.parent} (to start a"
                f" new run from {resume.name}'s weights: --pretrained {resume})"
            )
        elif not resume.exists():
            raise ResnetlabError(f"--resume {resume}: no such run folder")
        out = explicit.get("out")
        if out and Path(out).resolve() != Path(explicit["resume"]).resolve():
            raise ResnetlabError(
                f"--out {out} with --resume {explicit['resume']}: a resumed run goes on in its own folder; drop --out"
                " (to branch off, copy the folder and resume the copy)"
            )
        saved = Path(explicit["resume"]) / "config.yaml"
        if not saved.is_file():
            raise ResnetlabError(f"--resume {explicit['resume']}: no config.yaml there; is it a resnetlab run folder?")
        cfg = cfg.merge(load_yaml(saved), source=str(saved))
    yaml_values = load_yaml(args.config) if getattr(args, "config", None) else {}
    if yaml_values:
        cfg = cfg.merge(yaml_values, source=args.config)
    cfg = cfg.merge(explicit, source="command line")
    return _apply_recipe(cfg, yaml_values, explicit, resumed=bool(explicit.get("resume")))


def _apply_recipe(cfg: TrainConfig, yaml_values: dict, explicit: dict, resumed: bool) -> TrainConfig:
    """A named dataset (`cifar10`) becomes its image folder; a CIFAR ResNet on it gets the paper's recipe.

    The recipe sits between the defaults and the YAML file: anything the user wrote still wins.
    """
    from resnetlab.data.cifar10 import dataset_name, resolve_data_root
    from resnetlab.recipes import DATASET_DEFAULTS, recipe_for, recipe_overrides

    name = dataset_name(cfg.data)
    if name is None:
        return cfg
    recipe = recipe_for(cfg.data, cfg.model)
    if not recipe and not cfg.img_size and not resumed:
        log.warning(
            "note: %s's photos are 32 px; %s trains at its default 224 px, each photo upsampled 7x (49x the compute):"
            " --img-size 32, or a CIFAR model (--model resnet20, with the paper's recipe)", name, cfg.model,
        )  # fmt: skip
    if recipe and not resumed:
        layered = TrainConfig().merge({**recipe_overrides(recipe), **DATASET_DEFAULTS.get(name, {})}, source=recipe)
        if yaml_values:
            layered = layered.merge(yaml_values, source="config")
        cfg = layered.merge(explicit, source="command line")
    return dataclasses.replace(cfg, data=str(resolve_data_root(cfg.data)))


def run(args: argparse.Namespace) -> int:
    from resnetlab.engine.fit import fit

    cfg = resolve_config(args)
    summary = fit(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best_val_acc"]
        acc = (
            f"best val accuracy {best:.4f} at epoch {summary['best_epoch']}"
            if best is not None
            else f"no val split (last train accuracy {summary['final_train_acc']:.4f})"
        )
        fitted = ""
        if summary["time_budget_s"] is not None and summary["epochs_planned"] < cfg.epochs:
            fitted = f" ({summary['epochs_planned']} of {cfg.epochs} epochs fit the {cfg.time} budget)"
        print(f"done in {summary['wall_seconds']:.0f}s{fitted}: {acc}; run folder {summary['run_dir']}")
    return 0
