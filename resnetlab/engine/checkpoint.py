"""Self-describing checkpoints: written atomically, read with `weights_only=True`, rebuilt into a model.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts only, so `weights_only=True` can read it):

    format        "resnetlab-checkpoint"
    version       1
    arch          registered model name, e.g. "resnet18"
    num_classes   int
    classes       list[str], index i is class i
    model_kwargs  dict passed to `create_model` besides num_classes (e.g. in_chans)
    head          None or {"hidden": [512, 256], "dropout": 0.3}: an MLP head replacing the classifier
    default_cfg   preprocessing: input_size [C, H, W], mean, std, crop_pct, interpolation
    config        the training config as a plain dict (may be {})
    data          where the data came from: {"root", "val_fraction", "seed", "val_dir", ...} (may be {})
    epoch         last completed epoch (int, 0-based count of epochs done)
    best_acc      best validation top-1 so far (float, 0..1) or None
    metrics       dict of the latest epoch's metrics
    model         the model's state_dict
    optimizer, scheduler, scaler, rng, sampler: resume state (absent or None when not training)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.errors import ResnetlabError
from resnetlab.models.weights import load_tensors
from resnetlab.paths import atomic_write

FORMAT = "resnetlab-checkpoint"
VERSION = 1


def model_payload(
    arch: str,
    model: nn.Module,
    classes: list[str],
    default_cfg: dict[str, Any] | None = None,
    head: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The schema's fields for a model that predict, eval and export can load; `fields` adds or overrides (config,
    epoch, metrics, the resume state). `default_cfg` defaults to the model's own."""
    return {
        "arch": arch,
        "num_classes": len(classes),
        "classes": list(classes),
        "model_kwargs": {},
        "head": head,
        "default_cfg": dict(default_cfg if default_cfg is not None else model.default_cfg),
        "config": {},
        "data": data or {},
        "epoch": 0,
        "best_acc": None,
        "metrics": {},
        "model": model.state_dict(),
        **fields,
    }


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically: a temp file in the same folder, fsync, then rename over the target.

    A kill at any instant leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    try:
        with atomic_write(path) as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as exc:  # a full disk: torch reports it as "unexpected pos" from its zip writer
        reason = getattr(exc, "strerror", None) or _write_failure(exc)
        raise ResnetlabError(f"cannot write {path} ({reason}); the file there, if any, is as it was") from exc
    return path


def _write_failure(exc: BaseException) -> str:
    cause = exc.__context__ if isinstance(exc, RuntimeError) else None  # torch's RuntimeError wraps the OSError
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def resolve_checkpoint_path(run_or_checkpoint: str | os.PathLike, prefer: str = "best.pt") -> Path:
    """A run folder gives its `best.pt` (else `last.pt`); a file is taken as is."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        for name in (prefer, "best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise ResnetlabError(f"{path}: run folder has no best.pt or last.pt; train first or pass a checkpoint file")
    if not path.exists():
        raise ResnetlabError(f"{path}: no such run folder or checkpoint file")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a resnetlab checkpoint safely (`weights_only=True`); clear errors for missing, corrupt or foreign files."""
    path = resolve_checkpoint_path(path)
    ckpt = load_tensors(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ResnetlabError(
            f"{path}: not a resnetlab checkpoint (no 'format' key); plain weights are a starting point for training:"
            f" resnetlab train DIR --model ARCH --pretrained {path}"
        )
    check_complete(ckpt, path, MODEL_KEYS)
    classes = ckpt.get("classes")
    if classes is not None and len(classes) != ckpt["num_classes"]:
        raise ResnetlabError(
            f"{path}: {len(classes)} class names for a model of {ckpt['num_classes']} outputs; the file was edited"
        )
    return ckpt


# What any use of a checkpoint needs, and what --resume needs besides.
MODEL_KEYS = ("arch", "num_classes", "model")
RESUME_KEYS = ("epoch", "classes", "config", "metrics", "optimizer", "scheduler", "scaler", "rng")


def check_complete(ckpt: dict[str, Any], path: str | os.PathLike, keys: tuple[str, ...], use: str = "") -> None:
    """A one-line error naming the keys of `keys` that `ckpt` lacks (an edited or foreign file)."""
    if missing := [key for key in keys if ckpt.get(key) is None]:
        raise ResnetlabError(
            f"{path}: the checkpoint lacks {', '.join(missing)}{use}; it was edited or written by another tool"
        )


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint that `predict` and `export` use: a run folder's best.pt, a checkpoint file, or one of
    akamaster's CIFAR-10 ResNet files (`.th`), converted on the fly."""
    path = resolve_checkpoint_path(path)
    if path.suffix.lower() == ".th":
        from resnetlab.data.cifar10 import cifar_weights_checkpoint

        return cifar_weights_checkpoint(path)
    return load_checkpoint(path)


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (strict)."""
    from resnetlab.engine.heads import replace_head
    from resnetlab.models import create_model

    model = create_model(ckpt["arch"], num_classes=ckpt["num_classes"], **(ckpt.get("model_kwargs") or {}))
    head = ckpt.get("head")
    if head:
        replace_head(model, ckpt["num_classes"], hidden=head.get("hidden", ()), dropout=head.get("dropout", 0.0))
    state = ckpt["model"]
    # Checkpoints saved from DDP or torch.compile wrappers carry prefixes.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # keys or shapes the file's own description does not give
        detail = str(exc).strip().splitlines()
        raise ResnetlabError(
            f"the checkpoint's weights do not fit the {ckpt['arch']} with {ckpt['num_classes']} classes it describes"
            f" ({detail[1].strip()[:200] if len(detail) > 1 else detail[0][:200]}); the file was edited"
        ) from None
    if ckpt.get("default_cfg"):
        model.default_cfg = {**getattr(model, "default_cfg", {}), **ckpt["default_cfg"]}
    return model
