"""Random-number state for exact resumption, kept as tensors, lists and dicts so `weights_only=True` can load it.

Two mechanisms make `--resume` exact:
- every epoch starts with `seed_epoch(seed, epoch, rank)`, so the data order, augmentation, dropout and mixup of
  epoch e depend only on (seed, e, rank), not on what ran before (this also holds for DataLoader worker processes,
  which draw their seeds from the loader's generator, and for every DDP rank);
- the checkpoint also records the generators' states at save time (`capture_rng`), restored on resume
  (`restore_rng`), so anything drawn between epochs (none today) would also replay.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    # Distinct, reproducible streams per (seed, epoch, rank); the constants only spread the values apart.
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**31)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also seeds every CUDA device


def seed_epoch(seed: int, epoch: int, rank: int = 0, generators: tuple[torch.Generator, ...] = ()) -> None:
    """Reseed python, numpy, torch and the given loader/sampler generators for epoch `epoch`."""
    value = epoch_seed(seed, epoch, rank)
    seed_everything(value)
    for gen in generators:
        gen.manual_seed(value)


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """All RNG states as tensors/lists/ints (safe for `torch.load(weights_only=True)`)."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rng: dict[str, Any] = {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return rng


def restore_rng(rng: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of `capture_rng`; generators missing from the saved state are left alone."""
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npr = rng["numpy"]
    keys = npr["keys"].numpy().astype(np.uint32)
    np.random.set_state((npr["kind"], keys, npr["pos"], npr["has_gauss"], npr["cached"]))
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    saved = rng.get("generators", {})
    for name, gen in (generators or {}).items():
        if name in saved:
            gen.set_state(saved[name])
