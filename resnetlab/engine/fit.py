"""`fit(cfg)`: the epoch loop behind `resnetlab train`, and the run folder it writes.

Run folder: config.yaml, class_indices.json, best.pt (by val accuracy), last.pt, history.csv, curves.png,
TensorBoard event files and summary.json; .lock is held by the one process writing it (`run_lock`). Only rank 0
writes it under torchrun.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset, WeightedRandomSampler

from resnetlab.config import TrainConfig
from resnetlab.engine import distributed as ddp
from resnetlab.engine.budget import EpochCut, as_time_value, costs_ahead, plan_epochs
from resnetlab.engine.checkpoint import (
    RESUME_KEYS,
    check_complete,
    load_checkpoint,
    model_payload,
    save_checkpoint,
)
from resnetlab.engine.evaluate import evaluate
from resnetlab.engine.optim import (
    build_optimizer,
    build_schedule,
    configure_phase,
    param_groups,
    plan_phases,
    retarget_schedule,
    set_train_mode,
)
from resnetlab.engine.precision import Precision, inference_mode, resolve_precision
from resnetlab.engine.run_lock import RunLock
from resnetlab.engine.run_state import capture_rng, restore_rng, seed_epoch, seed_everything
from resnetlab.engine.train import fresh_bn_stats, progress_enabled, train_one_epoch
from resnetlab.errors import ResnetlabError
from resnetlab.paths import write_json

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "val_acc5", "img_s")

# Augmentation presets -> `build_transform("train", ...)` options; "none" uses the deterministic eval transform.
AUGMENT: dict[str, dict[str, Any] | None] = {
    "none": None,
    "light": {"scale": (0.6, 1.0), "hflip": 0.5},
    # Crops of at least 35% of the photo: on the 20-epoch TrashNet recipe (3 seeds) 0.35 averaged 0.806 against
    # 0.795 for 0.25, never below it (benchmarks/RESULTS.md); timm's 0.08 is too destructive for short runs.
    "default": {"scale": (0.35, 1.0), "hflip": 0.5},
    "strong": {"scale": (0.08, 1.0), "hflip": 0.5, "auto_augment": "trivial", "re_prob": 0.25},
    "cifar": None,  # built by `cifar_transform`
}


# ---------------------------------------------------------------------------------------------- model


def eval_shape(sizes: Iterable[tuple[int, int]], short: int) -> tuple[int, int] | None:
    """(H, W) with `short` as the shorter side and the images' common aspect ratio; None for square or mixed sets.

    Evaluating on the whole photo at its own aspect ratio instead of a square centre crop keeps the objects'
    edges in view: on TrashNet (4:3) it measured +3.7 points of val accuracy for the same weights
    (benchmarks/RESULTS.md). Only used when at least 80% of the images share the median ratio within 10%.
    """
    ratios = sorted(w / h for w, h in sizes if w and h)
    if not ratios:
        return None
    median = ratios[len(ratios) // 2]
    consistent = sum(abs(r / median - 1) < 0.1 for r in ratios) / len(ratios)
    if abs(median - 1) < 0.1 or consistent < 0.8:
        return None
    long = int(round(short * max(median, 1 / median) / 8) * 8)
    return (short, long) if median > 1 else (long, short)


def build_model(
    cfg: TrainConfig, num_classes: int, pretrained: bool = True, sizes: Iterable[tuple[int, int]] = ()
) -> tuple[nn.Module, dict | None]:
    """The model with the requested head; its default_cfg records the preprocessing actually used.

    Training crops are square (`img_size`); with `keep_aspect` and photos of one common aspect ratio, evaluation
    (and so predict, export and serve) resizes the whole photo to `img_size` x `img_size * ratio` without cropping.
    """
    from resnetlab.engine.heads import replace_head
    from resnetlab.models import create_model

    model = create_model(cfg.model, num_classes=num_classes, pretrained=cfg.pretrained if pretrained else None)
    carried = getattr(model, "pretrained_head", None)  # a trained head that --pretrained RUN/best.pt brought
    head = {"hidden": list(cfg.head), "dropout": float(cfg.dropout)} if cfg.head or cfg.dropout else None
    if head and head != carried:
        replace_head(model, num_classes, **head)
    head = head or carried
    c, h, w = model.default_cfg["input_size"]
    size = (cfg.img_size, cfg.img_size) if cfg.img_size else (h, w)
    model.default_cfg = {**model.default_cfg, "input_size": (c, *size)}
    shape = eval_shape(sizes, min(size)) if cfg.keep_aspect else None
    if shape:
        model.default_cfg = {**model.default_cfg, "input_size": (c, *shape), "crop_pct": 1.0}
    return model, head


# ---------------------------------------------------------------------------------------------- data


@dataclass
class RunData:
    splits: Any  # resnetlab.data.folder.DatasetSplits
    train_loader: Any  # DeviceLoader over images, or a DataLoader over cached features
    val_loader: Any
    sampler: Any
    generators: dict[str, torch.Generator]
    class_counts: list[int]


def _dataset(samples: list, transform: Callable, cache: str, substitute: bool = True) -> Any:
    """ImageDataset with the RAM cache when asked; `auto` falls back to no cache when it would not fit.
    `substitute=False` (validation) leaves unreadable images out instead of reading another in their place."""
    from resnetlab.data.loader import ImageDataset

    if cache == "none":
        return ImageDataset(samples, transform, substitute=substitute)
    try:
        dataset = ImageDataset(samples, transform, cache="ram", substitute=substitute)
    except ResnetlabError:
        if cache == "ram":
            raise
        return ImageDataset(samples, transform, substitute=substitute)
    dataset.warm_cache()  # decode once, in parallel; later epochs read pixels only
    return dataset


def train_transform(augment: str, default_cfg: dict, size: int, eval_tf: Callable) -> Callable:
    """The training transform (uint8 output) for an `--augment` preset ("none" reuses the deterministic eval one)."""
    from resnetlab.data.transforms import train_transform_from_cfg

    if augment == "cifar":
        return cifar_transform(size, default_cfg["mean"], default_cfg["std"])
    if AUGMENT[augment] is None:
        return eval_tf
    return train_transform_from_cfg(default_cfg, size, normalize=False, **AUGMENT[augment])


def cifar_transform(size: int, mean: Any, std: Any) -> Callable:
    """He et al. 2015 (section 4.2): resize to `size`, pad 4 pixels, random `size` crop, horizontal flip (uint8)."""
    from torchvision.transforms import v2

    tf = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(size, antialias=True),
            v2.CenterCrop(size),
            v2.RandomCrop(size, padding=4),  # black padding, as the measured degradation table used
            v2.RandomHorizontalFlip(),
        ]
    )
    tf.decode_size = size  # what the RAM cache stores
    tf.mean, tf.std = tuple(mean), tuple(std)
    return tf


def train_sampler(labels: list[int], cfg: TrainConfig, info: ddp.DistInfo) -> tuple[Any, dict]:
    """Shuffling sampler whose order depends only on (seed, epoch), split across ranks; or a class-balanced one."""
    if cfg.balanced_sampler:
        if info.enabled:
            raise ResnetlabError("--balanced-sampler is single-process for now; drop it or use --class-weights auto")
        counts = torch.bincount(torch.tensor(labels))
        weights = (1.0 / counts.double())[torch.tensor(labels)]
        gen = torch.Generator().manual_seed(cfg.seed)
        return WeightedRandomSampler(weights, len(labels), replacement=True, generator=gen), {"sampler": gen}
    # DistributedSampler is used in single-process runs too so that N ranks see exactly the batches one process sees.
    sampler = DistributedSampler(
        range(len(labels)), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed
    )
    return sampler, {}


def _drop_last(n: int, batch: int, info: ddp.DistInfo, whole_batches: bool = False) -> bool:
    """Drop a last partial batch of one, or one under half a batch when a full batch remains (any partial batch
    with `whole_batches`, as `--compile` asks).

    BatchNorm cannot normalise a batch of one in training mode; a small one costs a full step (plus new kernel shapes
    on first use) and gives noisy BatchNorm statistics, and its images come back in another order next epoch. timm
    always drops it; this keeps most images of small datasets. A compiled model recompiles for a second batch size
    (with a dynamic batch dimension): ResNet-18's first compiled epoch took 72 s instead of 34 s on the 2-core CPU
    (cold compile caches), and 57 s on an H100 (RESULTS.md).
    """
    per_rank = -(-n // info.world_size)
    rest = per_rank % batch
    if whole_batches and per_rank > batch:
        return rest > 0
    return rest == 1 or (per_rank > batch and 0 < rest < batch / 2)


def build_data(
    cfg: TrainConfig, default_cfg: dict, info: ddp.DistInfo, precision: Precision, splits: Any = None
) -> RunData:
    from resnetlab.data.folder import make_splits
    from resnetlab.data.loader import DeviceLoader, build_loader, cap_workers
    from resnetlab.data.transforms import BatchNormalize, eval_transform_from_cfg

    if splits is None:
        splits = make_splits(
            cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed, val_dir=cfg.val_dir, split_file=cfg.split_file
        )
    size = min(default_cfg["input_size"][-2:])  # training crops are square; eval may keep the aspect ratio
    # Transforms stop at uint8; each batch is normalised once, on the training device (BatchNormalize).
    eval_tf = eval_transform_from_cfg(default_cfg, normalize=False)
    train_tf = train_transform(cfg.augment, default_cfg, size, eval_tf)
    normalize = BatchNormalize(default_cfg["mean"], default_cfg["std"])

    def on_device(loader: DataLoader) -> DeviceLoader:
        return DeviceLoader(loader, normalize, precision.device, precision.memory_format)

    batch = ddp.per_rank_batch(cfg.batch_size, info)
    workers = cap_workers(cfg.workers)
    labels = [label for _, label in splits.train]
    sampler, generators = train_sampler(labels, cfg, info)
    train_set = _dataset(splits.train, train_tf, cfg.cache)
    device_type = precision.device.type
    train_loader = build_loader(
        train_set,
        batch,
        shuffle=True,
        num_workers=workers,
        drop_last=_drop_last(len(train_set), batch, info, whole_batches=cfg.compile),
        sampler=sampler,
        seed=cfg.seed,
        device_type=device_type,
    )
    if len(train_loader) == 0:  # one image (a rank's share of too few): a batch of one cannot train BatchNorm
        raise ResnetlabError(
            f"{cfg.data}: {len(train_set)} training image(s) make no training batch"
            f"{f' across {info.world_size} processes' if info.enabled else ''}: training needs at least 2 per batch;"
            " add images (or run fewer processes)"
        )
    generators = {**generators, "loader": train_loader.generator}
    train_loader = on_device(train_loader)
    val_loader = None
    if splits.val:
        val_set = _dataset(splits.val, eval_tf, cfg.cache, substitute=False)
        val_sampler = ddp.ShardSampler(len(val_set), info) if info.enabled else None
        val_loader = on_device(
            build_loader(
                val_set, batch, shuffle=False, num_workers=workers, sampler=val_sampler, device_type=device_type
            )
        )
    counts = torch.bincount(torch.tensor(labels), minlength=len(splits.classes)).tolist()
    return RunData(splits, train_loader, val_loader, sampler, generators, counts)


# ---------------------------------------------------------------------------------------------- frozen features


def extract_features(model: nn.Module, loader: DataLoader, precision: Precision) -> TensorDataset:
    """Pooled backbone features (N, F) and labels, in loader order: what the head sees, computed once."""
    model.eval()
    feats, labels = [], []
    with inference_mode(precision):
        for images, y in loader:
            x = model.forward_features(precision.prepare_batch(images))  # (B, C, H, W)
            feats.append(model.forward_head(x, pre_logits=True).float().cpu())  # (B, F)
            labels.append(y)
    return TensorDataset(torch.cat(feats), torch.cat(labels))


def feature_data(model: nn.Module, data: RunData, cfg: TrainConfig, precision: Precision) -> RunData:
    """Swap image loaders for loaders over cached features (same sampler, so the same order and batches)."""
    from resnetlab.data.loader import DeviceLoader, build_loader

    def plain(loader: DeviceLoader) -> DeviceLoader:
        """The same images in dataset order (the sampler draws from the cached features later)."""
        ordered = build_loader(loader.dataset, loader.batch_size, shuffle=False, num_workers=loader.num_workers)
        return DeviceLoader(ordered, loader.normalize, loader.device, loader.memory_format)

    train_feats = extract_features(model, plain(data.train_loader), precision)
    train_loader = build_loader(
        train_feats,
        data.train_loader.batch_size,
        shuffle=True,
        num_workers=0,
        drop_last=data.train_loader.drop_last,
        sampler=data.sampler,
        seed=cfg.seed,
    )
    val_loader = None
    if data.val_loader is not None:
        val_loader = build_loader(
            extract_features(model, data.val_loader, precision),
            data.val_loader.batch_size,
            shuffle=False,
            num_workers=0,
        )
    generators = {**data.generators, "loader": train_loader.generator}
    return dataclasses.replace(data, train_loader=train_loader, val_loader=val_loader, generators=generators)


def uses_feature_cache(cfg: TrainConfig, info: ddp.DistInfo) -> bool:
    """Frozen backbone + deterministic inputs: the backbone's output never changes, so compute it once."""
    return (
        cfg.cache_features
        and cfg.mode == "frozen"
        and cfg.augment == "none"
        and not cfg.mixup
        and not cfg.cutmix
        and not info.enabled
    )


# ---------------------------------------------------------------------------------------------- run folder


def _px(default_cfg: dict) -> str:
    h, w = default_cfg["input_size"][-2:]
    return f"{min(h, w)} px" if h == w else f"{min(h, w)} px (eval {h}x{w}, whole image)"


# Results a new run writes over: an --out holding any of them is refused (a best.pt kept on its own went). A config.yaml
# alone is a run stopped before its first epoch ended, which the advice for it starts afresh in place.
RUN_FILES = ("best.pt", "history.csv", "summary.json")


def refuse_taken_out(cfg: TrainConfig) -> None:
    """An `--out` that already holds a run, or any file a run writes, or is a file, is refused (checked before the
    set-up, and again when the folder is made)."""
    if not cfg.out:
        return
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ResnetlabError(f"--out {cfg.out}: a file, not a folder; choose another --out")
    if (out / "last.pt").exists():
        raise ResnetlabError(
            f"{cfg.out}: already holds a run; continue it with --resume {cfg.out} or choose another --out"
        )
    if taken := [name for name in RUN_FILES if (out / name).exists()]:
        raise ResnetlabError(
            f"--out {cfg.out}: holds {', '.join(taken)}, which a new run would overwrite; choose another --out"
        )


def make_run_dir(cfg: TrainConfig) -> Path:
    """`--out`, or runs/<data>-<model>, numbered -2, -3, ... when taken (as Ultralytics does)."""
    refuse_taken_out(cfg)
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        return out
    base = Path("runs") / f"{Path(cfg.data).resolve().name}-{cfg.model}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        out = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            out.mkdir()  # atomic: two runs started at once take different numbers
            return out
        except FileExistsError:
            continue


def read_history(path: Path, epochs: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if int(row["epoch"]) <= epochs]
    # As the rows were before writing: numbers, and "" where there was none (no validation split).
    return [{k: v if v in ("", None) else int(v) if k == "epoch" else float(v) for k, v in row.items()} for row in rows]


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """history.csv, written atomically: a stop mid-write left a torn row that resume read back as an empty one."""
    from resnetlab.paths import atomic_write

    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _fmt(row: dict[str, Any], total: int, best: tuple[float, int]) -> str:
    val = "" if row["val_acc"] == "" else f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
    return (
        f"epoch {row['epoch']:>3}/{total}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}{val}"
        f"  best {best[0]:.4f}@{best[1]}  lr {row['lr']:.2e}  {row['img_s']:.1f} img/s  {row['seconds']:.1f}s"
    )


# ---------------------------------------------------------------------------------------------- the loop

clock = time.perf_counter  # the run's wall clock (`--time`, summary.json); tests put a fake one here


def make_criterion(cfg: TrainConfig, counts: list[int], device: torch.device) -> nn.Module:
    weight = None
    if cfg.class_weights == "auto":
        n = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
        weight = (n.sum() / (len(counts) * n)).to(device)  # inverse frequency, 1.0 for a balanced set
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


class RunFinished(Exception):
    """`--resume` of a run with no epoch left to train: nothing is trained or rewritten."""

    def __init__(self, run_dir: Path, epoch: int, budget_bound: bool, patience: int | None = None) -> None:
        why = (
            "the --time budget ended it; to train on, resume with a larger --time"
            if budget_bound
            else f"to train on, resume with --epochs above {epoch}"
        )
        if patience is not None:
            why = (
                f"early stopping ended it, {patience} epochs without a better val accuracy; to train on, resume with"
                f" --patience above {patience}, or 0 for none"
            )
        super().__init__(
            f"{run_dir} already finished: last.pt holds its last epoch, {epoch}; nothing to resume ({why})"
        )
        self.summary_path = run_dir / "summary.json"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, `docker stop`, torchrun passing on a stop) met during `fit`."""


@contextmanager
def sigterm_stops_like_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in this process, so a stopped run ends as Ctrl-C does.

    Only the process that installed it raises: a forked child (a loader worker) inheriting the handler dies of
    SIGTERM as it would have without it.
    """
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    owner = os.getpid()

    def handler(signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fit(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train as `cfg` says; returns the summary (also written to the run folder's summary.json).

    Ctrl-C or SIGTERM ends it with a `ResnetlabError` (exit 130 or 143) saying what last.pt holds.
    """
    info = ddp.init_distributed(cfg.device)
    if not info.is_main:  # rank 0 speaks for all: the same warnings and errors would come once per process
        logging.getLogger("resnetlab").setLevel(logging.ERROR)
    trainer = None
    try:
        with sigterm_stops_like_ctrl_c(), ExitStack() as cleanup:  # cleanup: the run folder's lock
            trainer = Trainer(cfg, info, log if info.is_main else (lambda _msg: None), cleanup)
            epoch = trainer.start_epoch
            while epoch < trainer.epochs:  # a --time budget may move the end after each epoch
                if trainer.run_epoch(epoch):
                    break
                epoch += 1
            return trainer.finish()
    except RunFinished as done:  # its summary.json as it was
        if info.is_main:
            log(str(done))
        return json.loads(done.summary_path.read_text())
    except KeyboardInterrupt as exc:
        if hasattr(signal, "SIGCHLD"):
            # A scheduler's SIGTERM to the process group kills the loader workers too; PyTorch's SIGCHLD handler
            # would then raise while the loaders are collected, a traceback after the line below.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
        code = 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130  # the shell's codes for each signal
        raise ResnetlabError(
            interrupted_message(trainer, cfg, stopped, info), exit_code=code, quiet=not info.is_main
        ) from None
    except ResnetlabError as exc:
        exc.quiet = exc.quiet or not info.is_main
        raise
    finally:
        ddp.cleanup(info)


# Options that act on validation accuracy (early stopping, the plateau schedule): idle without a validation split.
NEEDS_VAL: dict[str, Callable[[TrainConfig], bool]] = {
    "--patience": lambda cfg: bool(cfg.patience),
    "--sched plateau": lambda cfg: cfg.sched == "plateau",
}

# Options that set the optimizer's rates: changed on --resume, they replace those the checkpoint's groups carry.
RATE_OPTIONS = frozenset({"lr", "wd", "momentum", "nesterov", "lr_mult"})

# What a run is made of: its weights, optimizer state and phases only fit the values it started with.
RESUME_FIXED = ("model", "head", "dropout", "mode", "freeze_epochs", "opt")
# What only says where, how long or how visibly a run goes on: changing these on --resume is a plain continuation.
# Data folders may move between sessions (check_resumed_data compares the validation files themselves).
RESUME_FREE = (
    "data",
    "val_dir",
    "split_file",
    "epochs",
    "time",
    "resume",
    "out",
    "progress",
    "workers",
    "cache",
    "device",
    "pretrained",
)


def check_resumed_options(cfg: TrainConfig, ckpt: dict[str, Any]) -> list[str]:
    """A one-line error when --resume is given another model, head, mode or optimizer than the run was made with
    (they failed deep in load_state_dict); epochs, time, LR, batch size, schedule and the rest may change. Returns
    those other changes ("batch_size 64 -> 16"), which make the resumed run differ from an uninterrupted one."""
    saved = ckpt.get("config") or {}
    names = [name for name in TrainConfig.field_names() if name not in RESUME_FREE]
    before = dataclasses.replace(cfg, **{name: saved[name] for name in (*names, "pretrained") if name in saved})

    def shown(value: Any) -> str:
        return ",".join(map(str, value)) or "none" if isinstance(value, (list, tuple)) else str(value)

    for name in RESUME_FIXED:
        now, then = getattr(cfg, name), getattr(before, name)
        if name == "opt":
            now, then = cfg.resolved_opt(), before.resolved_opt()
        if name == "freeze_epochs" and cfg.mode != "staged":
            continue  # only staged runs have phases
        if shown(now) != shown(then):
            raise ResnetlabError(
                f"--{name.replace('_', '-')} {shown(now)}: {cfg.resume} was made with {name} {shown(then)}, which"
                " a resumed run keeps; for another, start a new run"
                + ("" if name == "model" else f" (--pretrained {Path(cfg.resume) / 'best.pt'} starts from its weights)")
            )

    def value(c: TrainConfig, name: str) -> str:  # the rates as resolved: an unset --lr is its default
        return shown({"lr": c.resolved_lr, "wd": c.resolved_wd}.get(name, lambda: getattr(c, name))())

    changed = [n for n in names if n not in RESUME_FIXED and value(before, n) != value(cfg, n)]
    return [f"{n} {value(before, n)} -> {value(cfg, n)}" for n in changed]


def check_resumed_data(splits: Any, ckpt: dict[str, Any], log: Callable[[str], None]) -> None:
    """A resumed run's data folder against the one it started on: other classes cannot fit the model (one-line error);
    other files make a new split, which the log says (the resumed run is then not the uninterrupted one)."""
    if splits.classes != list(ckpt["classes"]):
        added = sorted(set(splits.classes) - set(ckpt["classes"]))
        gone = sorted(set(ckpt["classes"]) - set(splits.classes))
        change = "; ".join(filter(None, [added and f"added {added}", gone and f"missing {gone}"])) or "renamed"
        raise ResnetlabError(
            f"{splits.root}: its classes {splits.classes} are not the run's {list(ckpt['classes'])} ({change}); the"
            " model was built for the run's classes: start a new run to train on these"
        )
    record, now = ckpt.get("data") or {}, splits.record()
    before = record.get("counts") or {}
    changed = [f"{name} {before[name]} -> {n}" for name, n in now["counts"].items() if before.get(name, n) != n]
    what = f"{', '.join(changed)} images" if changed else ""
    if not changed and record.get("val_digest") not in (None, now["val_digest"]):
        what = "other validation images"
    if what:
        log(
            f"warning: {splits.root} changed since the run started ({what}): its split is made "
            "afresh, so this resumed run is not the uninterrupted one, and its validation is on other images"
        )


def resume_command(run: str | os.PathLike, info: ddp.DistInfo = ddp.DistInfo()) -> str:
    """The command that continues `run`: under torchrun, in the same form (one machine: its process count)."""
    if not info.enabled:
        return f"resnetlab train --resume {run}"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    launcher = f"torchrun --nproc-per-node {per_node}" if per_node == info.world_size else "torchrun (as started)"
    return f"{launcher} -m resnetlab train --resume {run}"


def interrupted_message(
    trainer: Trainer | None, cfg: TrainConfig, stopped: str = "interrupted", info: ddp.DistInfo = ddp.DistInfo()
) -> str:
    """What a stop leaves behind: the last complete epoch in last.pt (written atomically) and how to go on."""
    if trainer is None and cfg.resume:  # stopped while setting up a resumed run: last.pt is as it was
        last = Path(cfg.resume) / "last.pt"
        return f"{stopped}; {last} is unchanged: continue with {resume_command(cfg.resume, info)}"
    if trainer is None or not trainer.saved_epoch:
        return f"{stopped} before the first epoch ended: nothing to resume"
    return (
        f"{stopped}; {trainer.run_dir / 'last.pt'} holds epoch {trainer.saved_epoch}: "
        f"continue with {resume_command(trainer.run_dir, info)}"
    )


def planned_epochs(cfg: TrainConfig, ckpt: dict[str, Any] | None) -> int:
    """The run's planned length: --epochs, or fewer where a --time budget said so (kept in checkpoints for --resume).

    On resume with the same budget, the plan it made; with a new budget already spent, the epochs done; with a new,
    larger budget, as many epochs as fit at the pace of the run's last epoch (at least one; re-planned after each).
    Planned at --epochs instead, the first resumed epoch of an annealed run took the LR back up near its peak.
    """
    budget = cfg.time_budget_s()
    if not ckpt or budget is None or not ckpt.get("planned_epochs"):
        return cfg.epochs
    if ckpt["config"].get("time") == cfg.time:
        return min(cfg.epochs, int(ckpt["planned_epochs"]))
    done, left = int(ckpt["epoch"]), budget - float(ckpt.get("elapsed_seconds", 0.0))
    if left <= 0:
        return min(cfg.epochs, done)
    # A whole epoch's time as last measured (an epoch the budget cut short is estimated whole); older checkpoints: the
    # last epoch's row, which a cut epoch makes too short (3.4 s of a 16 s epoch planned 12 epochs where 3 fit).
    pace = float(ckpt.get("epoch_pace_s") or (ckpt.get("metrics") or {}).get("seconds") or 0.0)
    return min(cfg.epochs, done + max(1, int(left // pace))) if pace > 0 else cfg.epochs


def recorded_data_paths(cfg: TrainConfig, ckpt: dict[str, Any]) -> TrainConfig:
    """A resumed config whose relative data folders are not where it looks takes the checkpoint's absolute ones.

    Runs before config.yaml kept absolute paths saved the folders as typed, relative to where the run started, so
    `--resume` from another directory looked in the wrong place.
    """
    record = ckpt.get("data") or {}
    changes = {}
    for key, recorded in (("data", record.get("root")), ("val_dir", record.get("val_dir"))):
        value = getattr(cfg, key)
        if value and recorded and not Path(value).is_absolute() and not Path(value).exists():
            changes[key] = str(recorded)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def late_decay_warning(cfg: TrainConfig, epochs: int) -> str | None:
    """A warning when a step schedule would decay the rate at or after the run's last epoch, that is never."""
    late = [m for m in cfg.milestones if m >= epochs] if cfg.sched == "multistep" else []
    if cfg.sched == "step" and cfg.step_size and cfg.step_size >= epochs:
        late = [cfg.step_size]
    if not late:
        return None
    flag = "--milestones" if cfg.sched == "multistep" else "--step-size"
    return (
        f"warning: {flag} {','.join(map(str, late))}: the rate never drops there in a run of {epochs} epochs; use"
        f" {'milestones' if cfg.sched == 'multistep' else 'a step'} below {epochs}"
    )


class Trainer:
    """Holds one run's model, data, optimizer and bookkeeping; `fit` drives it epoch by epoch."""

    def __init__(
        self, cfg: TrainConfig, info: ddp.DistInfo, log: Callable[[str], None], cleanup: ExitStack | None = None
    ) -> None:
        from resnetlab.data.folder import make_splits, write_class_indices

        if not cfg.data:
            raise ResnetlabError("no data folder: pass DIR (one sub-folder per class) or set data in --config")
        self.cfg, self.info, self.log = cfg, info, log
        self.started = clock()
        self.precision = resolve_precision(ddp.device_for(info, cfg.device), cfg.amp, cfg.channels_last)
        ddp.check_sync_bn(cfg.sync_bn, info, self.precision.device)
        if cfg.resume and not (Path(cfg.resume) / "last.pt").exists() and (Path(cfg.resume) / "config.yaml").exists():
            raise ResnetlabError(
                f"--resume {cfg.resume}: no last.pt there, so the run stopped before its first epoch ended; start it"
                f" afresh with resnetlab train --config {Path(cfg.resume) / 'config.yaml'} --out {cfg.resume}"
            )
        ckpt = load_checkpoint(Path(cfg.resume) / "last.pt") if cfg.resume else None
        if ckpt is not None:
            last = Path(cfg.resume) / "last.pt"
            check_complete(
                ckpt,
                last,
                RESUME_KEYS,
                f" that --resume needs (its weights still start a new run: --pretrained {last})",
            )
            cfg = self.cfg = recorded_data_paths(cfg, ckpt)
        changed = check_resumed_options(cfg, ckpt) if ckpt is not None else []
        self.new_rates = any(change.split()[0] in RATE_OPTIONS for change in changed)
        if changed:
            log(
                f"note: resumed with other options than the run used ({', '.join(changed)}): it goes on from last.pt"
                " under them, so it is not the run it would have been"
            )
        self.budget = cfg.time_budget_s()
        self.epochs = planned_epochs(cfg, ckpt)
        if ckpt:
            self._refuse_finished(cfg, ckpt)
        if not cfg.resume:
            refuse_taken_out(cfg)  # now, not after the set-up

        if warning := late_decay_warning(cfg, self.epochs):
            log(warning)
        if cfg.mode != "finetune" and not cfg.pretrained:
            log(f"warning: --mode {cfg.mode} without --pretrained freezes a random backbone; use --mode finetune")
        seed_everything(cfg.seed)
        self.splits = make_splits(
            cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed, val_dir=cfg.val_dir, split_file=cfg.split_file
        )
        if self.splits.num_classes < 2:  # as `resnetlab data check` judges it: nothing to tell apart
            raise ResnetlabError(
                f"{cfg.data}: only 1 class folder ({self.splits.classes[0]}); a classifier needs at least 2: put each"
                " class's images in its own sub-folder"
            )
        if ckpt is not None:
            check_resumed_data(self.splits, ckpt, log)
        if not self.splits.val and (watching := [f for f, on in NEEDS_VAL.items() if on(cfg)]):
            log(f"warning: {' and '.join(watching)} watch validation accuracy, and this run has no validation split:"
                " they do nothing; give --val-fraction or a val folder")  # fmt: skip
        train_sizes = [self.splits.sizes[p] for p, _ in self.splits.train if p in self.splits.sizes]
        model, self.head_spec = build_model(cfg, self.splits.num_classes, pretrained=ckpt is None, sizes=train_sizes)
        if carried := getattr(model, "pretrained_head", None):
            cfg = self.cfg = self._record_carried_head(cfg, carried)
        self._prepare_model(model, ckpt)
        self.data = build_data(cfg, model.default_cfg, info, self.precision, self.splits)
        self.cached = uses_feature_cache(cfg, info)
        if cfg.mode == "frozen" and cfg.cache_features and not self.cached and not info.enabled:
            random = [f"--augment {cfg.augment}"] if cfg.augment != "none" else []
            random += [f"--{k} {v}" for k, v in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if v]
            log(
                f"note: with {' and '.join(random)} each epoch's inputs differ, so the frozen backbone runs every"
                " epoch; --augment none (no mixup) computes its features once and trains the head on them in"
                " milliseconds"
            )
        # Cached features are (B, F) vectors: no channels_last for the head.
        self.step_precision = (
            dataclasses.replace(self.precision, channels_last=False) if self.cached else self.precision
        )
        if self.cached:
            t0 = time.perf_counter()
            self.data = feature_data(self.model, self.data, cfg, self.precision)
            log(f"cached backbone features of {len(self.splits.train) + len(self.splits.val)} images "
                f"in {time.perf_counter() - t0:.1f}s")  # fmt: skip
        self.criterion = make_criterion(cfg, self.data.class_counts, self.precision.device)
        self.mixer = None
        if cfg.mixup or cfg.cutmix:
            from resnetlab.data.transforms import MixupCutmix

            self.mixer = MixupCutmix(self.splits.num_classes, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix)
        self.scaler = torch.amp.GradScaler(self.precision.device.type, enabled=self.precision.needs_grad_scaler)
        self.lr, self.wd = cfg.resolved_lr(), cfg.resolved_wd()  # config.yaml keeps None where a default applied
        self.elapsed_before = float(ckpt.get("elapsed_seconds", 0.0)) if ckpt else 0.0  # the budget spans resumes
        self.phases = plan_phases(cfg.mode, self.epochs, cfg.freeze_epochs)
        self.phase = -1  # index into self.phases; start_phase fills the four attributes below
        self.eval_modules: list[nn.Module] = []
        self.train_model = self.optimizer = self.schedule = None
        self.progress = progress_enabled(cfg.progress, info)

        # A new run's folder is made once its data, model and loaders are ready: bad input leaves no empty folder.
        run_dir = Path(cfg.resume) if cfg.resume else (make_run_dir(cfg) if info.is_main else None)
        self.run_dir = Path(ddp.broadcast_object(str(run_dir), info))
        if info.is_main:  # before anything is written; `fit` releases it however the run ends
            self.lock = RunLock(self.run_dir, resuming=bool(cfg.resume)).acquire()
            if cleanup is not None:
                cleanup.callback(self.lock.release)

        self._restore_bookkeeping(ckpt)
        # The training loop's time and images over every session of the run (summary.json's images/s).
        self.train_seconds = float(ckpt.get("train_seconds", 0.0)) if ckpt else 0.0
        self.train_images = int(ckpt.get("train_images", 0)) if ckpt else 0
        self.stopped_early = False

        self.writer = None
        if info.is_main:
            # Without `resume`: the file is the run's recipe, and `--config` of it must start a new run.
            dataclasses.replace(cfg.with_absolute_paths(), resume=None).to_yaml(self.run_dir / "config.yaml")
            write_class_indices(self.run_dir / "class_indices.json", self.splits.classes)
            self.writer = _summary_writer(self.run_dir)
        log(self.describe())
        self.epoch_seconds: list[tuple[str, float]] = []  # (phase kind, wall time) of each epoch in this process
        self.epoch_pace_s: float | None = None  # what a whole epoch takes, as last measured (saved for a resume)
        self.tail_seconds: float | None = None  # validating and saving the last epoch, for EpochCut
        self.mark = clock()

    def _refuse_finished(self, cfg: TrainConfig, ckpt: dict[str, Any]) -> None:
        """`RunFinished` when the resumed run has nothing left to train: its epochs are done, or early stopping ended
        it and would again under this --patience. A summary.json older than last.pt (the process died between the
        two) does not count: the run goes on, with no epoch left to train if so, and `finish` rewrites it."""
        epoch, summary_path = int(ckpt["epoch"]), Path(cfg.resume) / "summary.json"
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            summary = None
        if summary is None or int(summary.get("epochs_run", -1)) < epoch:
            if summary is not None:
                self.log(
                    f"note: {summary_path} describes {summary.get('epochs_run')} epochs, last.pt {epoch}: the run"
                    " stopped before writing it, so it is written again"
                )
            return
        if epoch >= self.epochs:
            raise RunFinished(Path(cfg.resume), epoch, budget_bound=self.epochs < cfg.epochs)
        best_epoch = int(ckpt["metrics"].get("best_epoch", 0))
        if summary.get("stopped_early") and cfg.patience and epoch - best_epoch >= cfg.patience:
            raise RunFinished(Path(cfg.resume), epoch, budget_bound=False, patience=cfg.patience)

    def _record_carried_head(self, cfg: TrainConfig, carried: dict[str, Any]) -> TrainConfig:
        """The config of a run whose --pretrained checkpoint brought a trained MLP head: it says that head, so that
        config.yaml, the checkpoints and --resume rebuild the model it trains (they named none, and failed to load)."""
        shown = f"hidden {','.join(map(str, carried['hidden'])) or 'none'}, dropout {carried['dropout']:g}"
        if self.head_spec == carried:
            self.log(f"note: {cfg.pretrained} brings its trained head ({shown}); the run trains on from it")
            return dataclasses.replace(cfg, head=list(carried["hidden"]), dropout=carried["dropout"])
        self.log(f"note: --head/--dropout replace the trained head ({shown}) that {cfg.pretrained} brought")
        return cfg

    def _prepare_model(self, model: nn.Module, ckpt: dict[str, Any] | None) -> None:
        """The model on its device and memory format, resumed weights, CPU kernels and the EMA copy."""
        cfg = self.cfg
        if ckpt is not None:  # with EMA, "model" holds the average and "train_model" the trained weights
            model.load_state_dict(ckpt.get("train_model") or ckpt["model"])
        self.model = self.precision.prepare_model(model)
        self.fused_bn = 0  # modules running BatchNorm + add + ReLU through engine/bn_act.c
        if self.precision.device.type == "cpu" and not cfg.compile:
            from resnetlab.engine.bn_act import enable_fused_bn_act
            from resnetlab.engine.conv1x1 import enable_matmul_1x1
            from resnetlab.engine.conv_wgrad import enable_gemm_weight_grad

            if self.precision.amp_dtype == torch.bfloat16:  # both measured faster in bf16 only (benchmarks/RESULTS.md)
                enable_gemm_weight_grad(self.model)  # 1.2x faster ResNet-18 steps at 96 px
                enable_matmul_1x1(self.model)  # 1.05-1.13x faster ResNet-50 steps at 224 px, batch 64
            # bf16 and fp32: ResNet-50 steps 1.27-1.36x faster in bf16, ResNet-18 1.12x (benchmarks/RESULTS.md)
            self.fused_bn = enable_fused_bn_act(self.model)
        self.ema = None
        if cfg.ema:
            from resnetlab.engine.ema import ModelEma

            self.ema = ModelEma(self.model, cfg.ema, copy_bn_stats=cfg.bn_stats == "epoch")
            if ckpt is not None and ckpt.get("train_model") is not None:
                self.ema.load(ckpt["model"], ckpt.get("ema") or {})

    def _restore_bookkeeping(self, ckpt: dict[str, Any] | None) -> None:
        """Where a resumed run stands (epoch, history, best so far, RNG streams), or a fresh start."""
        self.ckpt = ckpt
        self.start_epoch = int(ckpt["epoch"]) if ckpt else 0
        self.saved_epoch = self.start_epoch  # the epoch last.pt holds
        self.history = read_history(self.run_dir / "history.csv", self.start_epoch) if ckpt else []
        self.best_acc = float(ckpt["best_acc"]) if ckpt and ckpt.get("best_acc") is not None else -1.0
        self.best_epoch = int(ckpt["metrics"].get("best_epoch", 0)) if ckpt else 0
        if ckpt:
            restore_rng(ckpt["rng"], self.data.generators)

    def describe(self) -> str:
        """The run's first log line: data, model, precision, optimizer, mode and run folder."""
        cfg, info = self.cfg, self.info
        return (
            f"train {cfg.model}: {self.splits.num_classes} classes, {len(self.splits.train)} train / "
            f"{len(self.splits.val)} val images, {_px(self.model.default_cfg)}, "
            f"{self.precision.describe()}{', fused BN' if self.fused_bn else ''}, "
            f"batch {cfg.batch_size}{f' on {info.world_size} processes' if info.enabled else ''}, "
            f"{cfg.resolved_opt()} lr {self.lr:.2e} wd {self.wd:g} {cfg.sched}{f', EMA {cfg.ema}' if cfg.ema else ''}, "
            f"mode {cfg.mode}{' (cached features)' if self.cached else ''}"
            f"{f', time budget {cfg.time}' if self.budget is not None else ''} "
            f"-> {self.run_dir}"
        )

    def start_phase(self, epoch: int) -> None:
        """Enter the phase holding `epoch` when it is a new one: (un)freeze, fresh optimizer and schedule."""
        index = next(i for i, (_, a, b) in enumerate(self.phases) if a <= epoch < b)
        if index == self.phase:
            return
        cfg, self.phase = self.cfg, index
        kind, first, end = self.phases[index]
        pairs, self.eval_modules = configure_phase(self.model, kind, self.lr, cfg.lr_mult)
        trained = self.model.get_classifier() if self.cached else self.model
        self.train_model = _wrap(trained, cfg, self.info, self.precision)
        groups = param_groups(pairs, self.wd)
        self.optimizer = build_optimizer(cfg.resolved_opt(), groups, self.lr, cfg.momentum, cfg.nesterov)
        self.schedule = build_schedule(cfg.sched, self.optimizer, end - first, **self._schedule_args(first))
        if self.ckpt is not None and epoch == self.start_epoch and epoch > first:  # resumed mid-phase
            fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(self.ckpt["optimizer"])
            self.schedule.load_state_dict(self.ckpt["scheduler"])
            self.scaler.load_state_dict(self.ckpt["scaler"])
            if self.new_rates:
                # The saved groups carry the old rates (lr, its schedule's initial_lr, weight decay, momentum), which
                # a --lr or --wd given on resume must replace: they trained on at the old ones, the log saying new.
                for group, hyper in zip(self.optimizer.param_groups, fresh):
                    group.pop("initial_lr", None)
                    group.update(hyper)
                steps = self.schedule.steps
                self.schedule = build_schedule(cfg.sched, self.optimizer, end - first, **self._schedule_args(first))
                self.schedule.fast_forward(steps)
            else:
                # Continue this run's schedule at the steps taken. The saved state (the optimizer's current LR, a
                # OneCycleLR's length) describes the schedule the checkpoint was saved under: the same values when the
                # length is unchanged, but a run extended with a larger --epochs or --time took its first step at the
                # old schedule's end LR, and onecycle stopped at the old length.
                self.schedule = retarget_schedule(
                    self.schedule, self.optimizer, cfg.sched, end - first, **self._schedule_args(first)
                )

    def _schedule_args(self, first: int) -> dict[str, Any]:
        """build_schedule's arguments past the length, for a phase starting at epoch `first`."""
        cfg = self.cfg
        return {
            "steps_per_epoch": len(self.data.train_loader),
            "warmup_epochs": cfg.warmup_epochs,
            "min_lr_ratio": cfg.min_lr_ratio,
            "step_size": cfg.step_size,
            "gamma": cfg.gamma,
            "milestones": [m - first for m in cfg.milestones if m > first],
        }

    def elapsed(self) -> float:
        """Seconds this run has taken so far, counting earlier sessions of a resumed run."""
        return self.elapsed_before + clock() - self.started

    def fit_to_budget(self, epoch: int, cut_at: int | None = None, whole_epoch_s: float | None = None) -> str | None:
        """With --time: re-plan the run's length after `epoch` (ended after `cut_at` steps when the budget ran out
        in it, a whole one estimated at `whole_epoch_s`); returns a line to log when the plan changed."""
        now = clock()
        done = epoch + 1
        if cut_at is not None:  # the budget is spent: this epoch is the last (and, being partial, no estimate)
            self.epoch_pace_s = whole_epoch_s  # a whole one's, for a resume with more time (not the part that ran)
            self.epochs, self.phases = done, plan_phases(self.cfg.mode, done, self.cfg.freeze_epochs)
            steps = len(self.data.train_loader)
            advice = ""
            if whole_epoch_s is not None and cut_at < steps / 2:  # far from one pass over the data: say what would do
                whole, few = as_time_value(whole_epoch_s), as_time_value(3 * whole_epoch_s)
                advice = (
                    f"; a whole epoch takes about {whole} here, so a model this far from one pass over its data is"
                    f" barely trained: give --time {few} or more for a few epochs"
                )
            return (
                f"time budget {self.cfg.time}: {self.elapsed():.0f} s used; epoch {done} ended after {cut_at} of its"
                f" {steps} steps, where the budget runs out, and the run ends with it{advice}"
            )
        kind, seconds = self.phases[self.phase][0], now - self.mark  # saving included
        if whole_epoch_s is not None and all(k != kind for k, _ in self.epoch_seconds):
            # The first epoch of a kind pays one-off costs (2x a later one in a small run): planned on its own, it
            # shrank the plan, the next epoch's real time grew it again, and the LR, annealed, rose. Its pace after
            # the first step (EpochCut's estimate) is what the next will take.
            seconds = min(seconds, whole_epoch_s)
        self.epoch_seconds.append((kind, seconds))
        self.epoch_pace_s = seconds
        self.mark = now
        if self.budget is None:
            return None
        whole_run = plan_phases(self.cfg.mode, self.cfg.epochs, self.cfg.freeze_epochs)  # an epoch's kind, any length
        kinds = [kind for kind, first, end in whole_run for _ in range(max(first, done), end)]
        costs = costs_ahead(self.epoch_seconds, kinds)
        planned = plan_epochs(done, self.epochs, self.budget - self.elapsed(), costs)
        planned = ddp.broadcast_object(planned, self.info)  # every rank must stop at the same epoch
        if planned == self.epochs:
            return None
        old_end = self.phases[self.phase][2]
        self.epochs, self.phases = planned, plan_phases(self.cfg.mode, planned, self.cfg.freeze_epochs)
        _, first, end = self.phases[self.phase]
        if end != old_end and done < end:  # the current phase goes on over a new length: re-target its LR schedule
            self.schedule = retarget_schedule(
                self.schedule, self.optimizer, self.cfg.sched, end - first, **self._schedule_args(first)
            )
        next_epoch = f"{costs[0]:.1f} s for the next epoch" if costs else "no epoch left"
        return (
            f"time budget {self.cfg.time}: {self.elapsed():.0f} s used, {next_epoch}; "
            f"the run now ends after epoch {planned}"
        )

    def epoch_cut(self, epoch: int) -> EpochCut | None:
        """The guard that ends `epoch` early when it alone would overrun a --time budget (None without one)."""
        if self.budget is None:
            return None
        _, first, end = self.phases[self.phase]
        steps, before = len(self.data.train_loader), self.schedule.steps  # the phase's steps before this epoch

        def end_at(cut: int) -> None:  # the current phase's schedule ends after `cut` steps of this epoch
            if cut < steps:  # counted in steps taken: an earlier epoch may have been cut (a resumed run)
                length, total = epoch + 1 - first, before + cut
            else:  # the cut was lifted: back to the planned length
                length, total = end - first, None
            new = retarget_schedule(
                self.schedule, self.optimizer, self.cfg.sched, length, total_steps=total, **self._schedule_args(first)
            )
            self.schedule.adopt(new)  # in place: train_one_epoch holds this object

        val_steps = len(self.data.val_loader) if self.data.val_loader is not None else 0
        deadline = clock() + self.budget - self.elapsed()
        return EpochCut(
            steps, deadline, self.budget, self.tail_seconds, val_steps, end_at, self.info, self.precision.device, clock
        )

    def run_epoch(self, epoch: int) -> bool:
        """Train and validate one epoch, save checkpoints and logs; True when early stopping says stop."""
        cfg, data = self.cfg, self.data
        self.start_phase(epoch)
        if isinstance(data.sampler, DistributedSampler):
            data.sampler.set_epoch(epoch)
        seed_epoch(cfg.seed, epoch, self.info.rank, tuple(data.generators.values()))
        start = time.perf_counter()
        eval_modules = [] if self.cached else self.eval_modules
        # --bn-stats epoch: the running statistics of the BatchNorms this epoch trains cover this epoch only.
        bn_window = nullcontext()
        if cfg.bn_stats == "epoch":
            bn_window = fresh_bn_stats(set_train_mode(self.train_model, eval_modules, cfg.freeze_bn))
        cut = self.epoch_cut(epoch)
        with bn_window:
            stats = train_one_epoch(
                self.train_model, data.train_loader, self.optimizer, self.schedule, self.criterion,
                self.step_precision, scaler=self.scaler, mixer=self.mixer, aux_weight=cfg.aux_weight,
                grad_clip=cfg.grad_clip, eval_modules=eval_modules, freeze_bn=cfg.freeze_bn, info=self.info,
                desc=f"epoch {epoch + 1}/{self.epochs}", progress=self.progress, ema=self.ema, stop=cut,
            )  # fmt: skip
        trained = clock()
        ddp.average_bn_stats(self.model, self.info)  # every rank validates, and rank 0 saves, the same statistics
        if self.ema:
            self.ema.copy_bn_stats()  # the epoch's corrected statistics (a no-op where the EMA averages them)
        if not math.isfinite(stats["loss"]):
            raise ResnetlabError(
                f"training diverged at epoch {epoch + 1} (loss is {stats['loss']}); lower --lr or add --grad-clip"
            )
        val = None
        if data.val_loader is not None:
            eval_model = self.ema.module if self.ema else self.model  # the averaged weights are the ones kept
            eval_model = eval_model.get_classifier() if self.cached else eval_model
            val = evaluate(eval_model, data.val_loader, self.step_precision, self.info)
        self.schedule.epoch_end(val["acc"] if val else None)
        self.train_seconds += stats["seconds"]
        self.train_images += stats["n"]

        score = val["acc"] if val else stats["acc"]  # without a validation split, the last epoch is the best
        improved = score > self.best_acc or not val
        if improved:
            self.best_acc, self.best_epoch = score, epoch + 1
        row = {
            "epoch": epoch + 1,
            "lr": stats["lr"],
            "train_loss": stats["loss"],
            "train_acc": stats["acc"],
            "val_loss": val["loss"] if val else "",
            "val_acc": val["acc"] if val else "",
            "seconds": time.perf_counter() - start,  # training and validation
            "val_acc5": val["acc5"] if val else "",
            "img_s": stats["img_s"],
        }
        self.history.append(row)
        cut_at = cut.cut if cut is not None and cut.cut < cut.steps else None
        replanned = self.fit_to_budget(epoch, cut_at, cut.whole_epoch_s if cut is not None else None)
        if self.info.is_main:
            self.save(row, improved)
        self.saved_epoch = row["epoch"]  # on every rank, so a stop under torchrun says the same everywhere
        self.tail_seconds = clock() - trained
        self.log(_fmt(row, self.epochs, (self.best_acc, self.best_epoch)))
        if replanned:
            self.log(replanned)
        if cfg.patience and epoch + 1 - self.best_epoch >= cfg.patience:
            self.log(f"early stop: no better val accuracy for {cfg.patience} epoch{'s' if cfg.patience > 1 else ''}")
            self.stopped_early = True
        return self.stopped_early

    def save(self, row: dict[str, Any], improved: bool) -> None:
        """last.pt (and best.pt when improved) with the checkpoint schema, then history.csv and TensorBoard."""
        payload = model_payload(
            self.cfg.model,
            self.ema.module if self.ema else self.model,  # what predict, eval and export load: the EMA when on
            self.splits.classes,
            default_cfg=_plain(self.model.default_cfg),
            head=self.head_spec,
            data=self.splits.record(),
            config=self.cfg.with_absolute_paths().to_dict(),
            epoch=row["epoch"],
            best_acc=self.best_acc,
            metrics={**row, "best_epoch": self.best_epoch},
            train_model=self.model.state_dict() if self.ema else None,
            ema=self.ema.state_dict() if self.ema else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.schedule.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=capture_rng(self.data.generators),
            planned_epochs=self.epochs,
            elapsed_seconds=self.elapsed(),
            train_seconds=self.train_seconds,
            train_images=self.train_images,
            epoch_pace_s=self.epoch_pace_s,
        )
        # last.pt last: it is what --resume starts from, so everything it describes is on disk before it. A stop
        # between files (it was last.pt first) left best.pt an epoch behind and history.csv a row short, for good; now
        # the resumed run retrains the epoch and rewrites them. Resume reads history.csv up to last.pt's epoch.
        try:
            write_history(self.run_dir / "history.csv", self.history)
            _log_scalars(self.writer, row, row["epoch"])
            if improved:
                save_checkpoint(self.run_dir / "best.pt", payload)
            save_checkpoint(self.run_dir / "last.pt", payload)
        except ResnetlabError as exc:  # a full disk: say what last.pt holds and how to go on
            raise ResnetlabError(
                f"{exc}; {self.run_dir / 'last.pt'} holds epoch {self.saved_epoch}: free space, then"
                f" {resume_command(self.run_dir, self.info)}"
            ) from exc
        self.saved_epoch = row["epoch"]

    def finish(self) -> dict[str, Any]:
        """summary.json and curves.png (rank 0); returns the summary on every rank."""
        summary = {
            "model": self.cfg.model,
            "lr": self.lr,  # the peak rate and decay in use
            "weight_decay": self.wd,
            "best_epoch": self.best_epoch,
            # Without a validation split the last epoch counts as the best, but its accuracy is a training one.
            "best_val_acc": self.best_acc if self.best_acc >= 0 and self.splits.val else None,
            "final_val_acc": self.history[-1]["val_acc"] if self.history and self.splits.val else None,
            "final_train_acc": self.history[-1]["train_acc"] if self.history else None,
            "epochs_run": len(self.history),
            "epochs_planned": self.epochs,
            "time_budget_s": self.budget,
            "stopped_early": self.stopped_early,
            "wall_seconds": self.elapsed(),  # the whole run, earlier sessions of a resumed one included
            "train_images_per_s": self.train_images / self.train_seconds if self.train_seconds else None,
            "precision": self.precision.describe(),
            "feature_cache": self.cached,
            "world_size": self.info.world_size,
            "run_dir": str(self.run_dir.resolve()),
        }
        if self.info.is_main:
            from resnetlab.report.plots import plot_curves

            self.writer.close()
            rows = read_history(self.run_dir / "history.csv", self.epochs)
            plot_curves(rows, self.run_dir / "curves.png", title=self.run_dir.name)
            write_json(self.run_dir / "summary.json", summary)  # atomic: a stop mid-write leaves the old one
        ddp.barrier(self.info)
        return summary


def _wrap(model: nn.Module, cfg: TrainConfig, info: ddp.DistInfo, precision: Precision) -> nn.Module:
    model = ddp.wrap_model(model, info, precision.device, sync_bn=cfg.sync_bn)
    return torch.compile(model) if cfg.compile else model


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so the config reads back as JSON-like data."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _summary_writer(run_dir: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir))


def _log_scalars(writer: Any, row: dict[str, Any], step: int) -> None:
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "val_acc5", "lr", "img_s"):
        if row[name] != "":
            split, _, metric = name.partition("_") if name.startswith(("train", "val")) else ("", "", name)
            writer.add_scalar(f"{metric}/{split}" if split else name, float(row[name]), step)
    writer.flush()
