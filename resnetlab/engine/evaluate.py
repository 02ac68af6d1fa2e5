"""Validation pass: mean cross-entropy, top-1 and top-5 accuracy over a loader (summed over DDP ranks)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.engine.distributed import DistInfo, all_reduce_sum
from resnetlab.engine.precision import Precision, inference_mode
from resnetlab.engine.train import split_outputs
from resnetlab.metrics import top_classes


def evaluate(model: nn.Module, loader: Iterable, precision: Precision, info: DistInfo = DistInfo()) -> dict[str, float]:
    """dict(loss, acc, acc5, n). Plain (unsmoothed, unweighted) cross-entropy so runs compare across recipes."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=precision.device)  # loss sum, top-1, top-5, count
    with inference_mode(precision):
        for images, labels in loader:
            images = precision.prepare_batch(images)  # (B, C, H, W), or (B, F) for cached features
            labels = labels.to(precision.device)
            logits, _ = split_outputs(model(images))
            logits = logits.float()  # (B, num_classes)
            k = min(5, logits.shape[1])
            top = top_classes(logits, k)[1]  # (B, k); ties to the lower index, as in training's accuracy
            hits = top == labels[:, None]
            totals += torch.stack(
                [
                    F.cross_entropy(logits, labels, reduction="sum").double(),
                    hits[:, 0].sum().double(),
                    hits.any(1).sum().double(),
                    totals.new_tensor(labels.numel()),
                ]
            )
    model.train(was_training)
    loss_sum, top1, top5, count = all_reduce_sum(totals, info).tolist()
    count = max(count, 1.0)
    return {"loss": loss_sum / count, "acc": top1 / count, "acc5": top5 / count, "n": int(count)}
