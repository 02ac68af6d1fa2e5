"""The degradation experiment (He et al. 2015, Figures 1 and 6): deeper plain nets train worse, residual ones do not.

For each depth N, plain-N and ResNet-N (the CIFAR-style networks, identical but for the shortcuts) are trained with
one recipe and one seed through the ordinary training engine; each is a normal run folder under `out/` (`plain20/`,
`resnet20/`, ...), so an interrupted experiment resumes where it stopped and a finished run is reused.

Training error is `1 - train_acc` from each run's history.csv: measured on the augmented images while the epoch
trains, as in the paper's curves (not a separate pass over the clean training set). Validation error is measured
after each epoch on the held-out images (for `cifar10`, the official test set, as the paper plots).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnetlab.errors import ResnetlabError
from resnetlab.paths import write_json

KINDS = ("plain", "resnet")  # model name prefixes in resnetlab.models.cifar_resnet
LABELS = {"plain": "plain-{}", "resnet": "ResNet-{}"}
LINESTYLES = {"plain": "--", "resnet": "-"}
MARGIN = 0.01  # error differences within one point count as "not worse"
NOISE_IMAGES = 3  # ... and within this many training images' worth, on a small folder
DEFAULT_EPOCHS = 30  # depths 20 and 56 on TrashNet at 32 px: ~10 minutes measured on a quiet 2-core CPU (see README)
# A minutes-long run makes a few hundred steps where the paper made 64k: batch 32 gives 4x the steps of the paper's
# 128 for the same compute, with the paper's learning rate scaled linearly (0.1 per 128 images).
SHORT_RUN = {"batch_size": 32, "lr": 0.025}
# Settings that may differ between an earlier invocation and this one without changing the experiment.
_IGNORED_KEYS = {"out", "resume", "progress", "workers", "device", "cache"}
TRAIN_ERROR_NOTE = (
    "training error = 1 - train_acc of history.csv: measured on augmented images during each epoch, like the "
    "paper's curves, not a separate clean pass over the training set"
)


@dataclass
class ModelResult:
    """One run's curves (errors as fractions, per epoch) and where it lives."""

    name: str
    depth: int
    residual: bool
    run_dir: Path
    epochs: list[int] = field(default_factory=list)
    train_err: list[float] = field(default_factory=list)
    val_err: list[float] = field(default_factory=list)
    seconds: float = 0.0
    reused: bool = False
    images_per_epoch: int = 0  # training images an epoch saw: one of them is 100 / N points of training error

    def record(self) -> dict[str, Any]:
        def best(xs: list[float]) -> float | None:
            xs = [x for x in xs if not math.isnan(x)]
            return min(xs) if xs else None

        return {
            "depth": self.depth,
            "residual": self.residual,
            "final_train_err": self.train_err[-1] if self.train_err else None,
            "best_train_err": best(self.train_err),
            "final_val_err": self.val_err[-1] if self.val_err and not math.isnan(self.val_err[-1]) else None,
            "best_val_err": best(self.val_err),
            "epochs": len(self.epochs),
            "seconds": round(self.seconds, 1),
            "reused": self.reused,
            "run_dir": str(self.run_dir),
            "curve": {"epoch": self.epochs, "train_err": self.train_err, "val_err": self.val_err},
        }


# ---------------------------------------------------------------------------------------------- configuration


def parse_depths(text: str | Sequence[int]) -> list[int]:
    """`"20,56"` -> [20, 56]: CIFAR depths 6n+2 that have both a plain and a residual model, sorted."""
    from resnetlab.models.cifar_resnet import MODEL_CFGS

    try:
        depths = sorted({int(d) for d in (text.split(",") if isinstance(text, str) else text) if str(d).strip()})
    except ValueError:
        raise ResnetlabError(f"--depths {text!r}: expected comma-separated integers, e.g. 20,56") from None
    known = sorted({cfg["depth"] for cfg in MODEL_CFGS.values()})
    bad = [d for d in depths if f"plain{d}" not in MODEL_CFGS or f"resnet{d}" not in MODEL_CFGS]
    if not depths or bad:
        raise ResnetlabError(f"--depths {text!r}: choose from {', '.join(map(str, known))}")
    return depths


def data_settings(data: str) -> tuple[dict[str, Any], str]:
    """TrainConfig data values for a folder or a dataset name, and a short name for the data."""
    from resnetlab.data import cifar10

    if cifar10.dataset_name(data) == cifar10.NAME:
        images = cifar10.prepare()
        # All 50k training images; the curves' "validation" is the official test set, as in the paper's figures.
        return {"data": str(images / "train"), "val_dir": str(images / "test")}, cifar10.NAME
    path = Path(data).expanduser()
    if not path.is_dir():
        raise ResnetlabError(f"{data}: no such folder (pass an image folder with one sub-folder per class, or cifar10)")
    return {"data": str(path.resolve())}, path.resolve().name  # run folders record it absolute


def base_config(
    data: dict[str, Any],
    epochs: int,
    img_size: int,
    seed: int,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """The one TrainConfig all models share (the paper's CIFAR recipe), before the model and run folder are set."""
    from resnetlab.config import TrainConfig
    from resnetlab.recipes import recipe_overrides

    values = {
        **recipe_overrides("cifar_resnet", epochs),
        **SHORT_RUN,
        **data,
        "img_size": img_size,
        "seed": seed,
    }
    return TrainConfig.from_dict({**values, **(overrides or {})}, source="experiment degradation")


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in _IGNORED_KEYS}


def _read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _float(value: str | None) -> float:
    return float(value) if value not in (None, "") else math.nan


# ---------------------------------------------------------------------------------------------- running


def run_model(cfg: Any, run_dir: Path, log: Callable[[str], None]) -> bool:
    """Train `cfg.model` in `run_dir`: reuse a finished run, resume a partial one, else start. True if reused."""
    from resnetlab.engine.fit import fit

    saved = run_dir / "config.yaml"
    if (run_dir / "last.pt").is_file() and saved.is_file():
        before = _comparable(type(cfg).from_yaml(saved).to_dict())
        now = _comparable(cfg.to_dict())
        changed = sorted(k for k in now if before.get(k) != now[k])
        if changed:
            raise ResnetlabError(
                f"{run_dir}: an earlier run used other settings ({', '.join(changed)}); "
                "choose another --out or delete that folder"
            )
        done = len(_read_history(run_dir / "history.csv"))
        if done >= cfg.epochs and (run_dir / "summary.json").is_file():
            log(f"{run_dir.name}: finished earlier ({done} epochs), reused")
            return True
        log(f"{run_dir.name}: resuming after epoch {done}")
        fit(cfg.merge({"resume": str(run_dir), "out": None}), log=log)
        return False
    fit(cfg.merge({"out": str(run_dir), "resume": None}), log=log)
    return False


def collect(kind: str, depth: int, run_dir: Path, reused: bool) -> ModelResult:
    """Curves of one finished run from its history.csv."""
    result = ModelResult(f"{kind}{depth}", depth, kind == "resnet", run_dir, reused=reused)
    for row in _read_history(run_dir / "history.csv"):
        result.epochs.append(int(row["epoch"]))
        result.train_err.append(1.0 - _float(row["train_acc"]))
        result.val_err.append(1.0 - _float(row.get("val_acc")))
        result.seconds += _float(row.get("seconds")) if row.get("seconds") else 0.0
    if not result.epochs:
        raise ResnetlabError(f"{run_dir}: no history.csv rows; the run did not complete an epoch")
    from resnetlab.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir / "last.pt")
    result.images_per_epoch = int(ckpt.get("train_images", 0)) // max(1, int(ckpt.get("epoch", 1)))
    return result


# ---------------------------------------------------------------------------------------------- verdict


def verdict(results: dict[str, ModelResult], depths: Sequence[int], margin: float = MARGIN) -> dict[str, Any]:
    """Did degradation appear between the shallowest and deepest depth (final-epoch training error)?

    Yes when the deeper plain net's training error is more than `margin` above the shallower one's, while the deeper
    ResNet's is at most `margin` above the shallower ResNet's. The margin is at least NOISE_IMAGES images' worth of
    error: on 30 training images one image is 3.3 points, and a fixed 1-point margin called noise a finding.
    """
    lo, hi = min(depths), max(depths)
    if lo == hi:
        return {"appeared": None, "reason": "one depth only: nothing to compare", "margin": margin}
    seen = min((r.images_per_epoch for r in results.values() if r.images_per_epoch), default=0)
    margin = max(margin, NOISE_IMAGES / seen) if seen else margin
    plain = results[f"plain{hi}"].train_err[-1] - results[f"plain{lo}"].train_err[-1]
    res = results[f"resnet{hi}"].train_err[-1] - results[f"resnet{lo}"].train_err[-1]
    plain_degrades, res_ok = plain > margin, res <= margin
    return {
        "appeared": plain_degrades and res_ok,
        "shallow": lo,
        "deep": hi,
        "plain_train_err_delta": plain,
        "resnet_train_err_delta": res,
        "plain_deeper_is_worse": plain_degrades,
        "resnet_deeper_not_worse": res_ok,
        "margin": margin,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def format_table(results: dict[str, ModelResult], depths: Sequence[int], v: dict[str, Any]) -> str:
    """The verdict table (final-epoch errors) and one line saying whether degradation appeared."""
    header = ("depth", "plain train err", "resnet train err", "plain val err", "resnet val err")
    rows = [header]
    for d in depths:
        p, r = results[f"plain{d}"], results[f"resnet{d}"]
        rows.append((str(d), _pct(p.train_err[-1]), _pct(r.train_err[-1]), _pct(p.val_err[-1]), _pct(r.val_err[-1])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    if v["appeared"] is None:
        lines.append(f"degradation: not tested ({v['reason']})")
    else:
        lo, hi = v["shallow"], v["deep"]
        dp, dr = 100 * v["plain_train_err_delta"], 100 * v["resnet_train_err_delta"]
        lines.append(
            f"degradation {'APPEARED' if v['appeared'] else 'did not appear'}: plain-{hi} training error is "
            f"{dp:+.1f} points vs plain-{lo} ({'worse' if v['plain_deeper_is_worse'] else 'not worse'}); "
            f"ResNet-{hi} is {dr:+.1f} points vs ResNet-{lo} "
            f"({'not worse' if v['resnet_deeper_not_worse'] else 'worse'}; margin {100 * v['margin']:.3g} points)"
        )
        if v["plain_deeper_is_worse"] and not v["resnet_deeper_not_worse"]:
            lines.append(
                f"shortcuts cut the depth penalty from {dp:.1f} to {dr:.1f} points; "
                "train longer (--epochs) for the paper's full picture"
            )
    lines.append("(final epoch; " + TRAIN_ERROR_NOTE + ")")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plot


def plot(results: dict[str, ModelResult], depths: Sequence[int], path: Path, title: str = "") -> Path:
    """Training (left) and validation (right) error vs epoch: plain dashed, residual solid, one colour per depth."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    colours = {d: f"C{i}" for i, d in enumerate(depths)}
    for ax, key, label in ((axes[0], "train_err", "training error (%)"), (axes[1], "val_err", "validation error (%)")):
        for d in depths:
            for kind in KINDS:
                r = results[f"{kind}{d}"]
                ys = [100 * y for y in getattr(r, key)]
                style = dict(color=colours[d], label=LABELS[kind].format(d), linewidth=1.6, marker="o", markersize=3)
                ax.plot(r.epochs, ys, LINESTYLES[kind], **style)  # markers: a one-epoch run is points, not nothing
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("training error (augmented, during each epoch)", fontsize=10)
    axes[1].set_title("validation error", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------- experiment


def run_degradation(
    data: str,
    depths: Sequence[int] = (20, 56),
    epochs: int = DEFAULT_EPOCHS,
    img_size: int = 32,
    out: str | Path | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train plain-N and ResNet-N for each depth, then write degradation.png/.json in `out`; returns the record."""
    started = time.perf_counter()
    depths = parse_depths(depths)
    data_values, data_name = data_settings(data)
    cfg = base_config(data_values, epochs, img_size, seed, overrides)
    out = (Path(out) if out else Path("runs") / f"degradation-{data_name}").resolve()
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, ModelResult] = {}
    for d in depths:
        for kind in KINDS:
            name = f"{kind}{d}"
            run_dir = out / name
            prefix = f"[{name}] "
            reused = run_model(cfg.merge({"model": name}), run_dir, lambda msg, p=prefix: log(p + msg))
            results[name] = collect(kind, d, run_dir, reused)

    v = verdict(results, depths)
    shared = {k: v_ for k, v_ in cfg.to_dict().items() if k not in _IGNORED_KEYS | {"model", "data", "val_dir"}}
    record = {
        "experiment": "degradation",
        "data": data_values["data"],
        "val_dir": data_values.get("val_dir"),
        "dataset": data_name,
        "depths": list(depths),
        "epochs": cfg.epochs,
        "img_size": img_size,
        "seed": seed,
        "config": shared,
        "train_error_note": TRAIN_ERROR_NOTE,
        "models": {name: r.record() for name, r in results.items()},
        "verdict": v,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(sum(r.seconds for r in results.values()), 1),
    }
    title = f"degradation on {data_name}, {img_size} px, {cfg.epochs} epochs, seed {seed}"
    plot(results, depths, out / "degradation.png", title)
    write_json(out / "degradation.json", record)
    record["table"] = format_table(results, depths, v)
    record["out"] = str(out)
    return record
