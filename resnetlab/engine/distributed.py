"""DistributedDataParallel under `torchrun`: process-group set-up, samplers, reductions.

`torchrun --nproc-per-node N -m resnetlab train DIR ...` sets RANK / WORLD_SIZE / LOCAL_RANK; `init_distributed`
reads them and joins the group (nccl on CUDA, gloo on CPU). Without those variables everything is single-process.

Batch size: `--batch-size` is the GLOBAL batch, split evenly across processes (each rank takes batch_size / N), so a
run's learning rate, schedule and results do not depend on how many processes train it. Only rank 0 writes the run
folder and prints.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from resnetlab.errors import ResnetlabError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; returns this process's rank info."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda") or device == "auto")
    if use_cuda:
        # Every rank checks before joining, so all of them stop with this line instead of rank N dying in set_device
        # ("invalid device ordinal") while the others wait 30 s in the rendezvous (seen on a 1-GPU H100, 2026-11-28).
        per_node, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", info.local_rank + 1)), torch.cuda.device_count()
        if per_node > gpus:
            raise ResnetlabError(
                f"torchrun started {per_node} processes on this machine, which has {gpus} CUDA device(s): run"
                f" --nproc-per-node {gpus} or fewer (one process per GPU), or pass --device cpu to train on the CPU"
            )
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def device_for(info: DistInfo, device: str | None) -> str | None:
    """Under torchrun on CUDA each process drives the GPU with its local rank."""
    if info.enabled and torch.cuda.is_available() and device in (None, "auto", "cuda"):
        return f"cuda:{info.local_rank}"
    return device


def per_rank_batch(batch_size: int, info: DistInfo) -> int:
    if batch_size % info.world_size:
        raise ResnetlabError(
            f"--batch-size {batch_size} is the global batch and must divide by the {info.world_size} processes"
        )
    return batch_size // info.world_size


def check_sync_bn(sync_bn: bool, info: DistInfo, device: torch.device) -> None:
    """--sync-bn under torchrun needs CUDA: said before any set-up, so a refused run leaves no folder behind."""
    if sync_bn and info.enabled and device.type != "cuda":
        raise ResnetlabError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); drop the flag")


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """DDP-wrap the model (after optional SyncBatchNorm conversion); unchanged when single-process."""
    if sync_bn and not info.enabled:
        return model  # nothing to synchronise
    if sync_bn:
        check_sync_bn(sync_bn, info, device)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # Frozen parameters (requires_grad False) are skipped by DDP; every trainable one gets a gradient each step.
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


class ShardSampler(Sampler[int]):
    """Rank r takes indices r, r+N, r+2N, ... without padding, so evaluation counts every image exactly once."""

    def __init__(self, length: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, length, info.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a small tensor of totals (loss sum, correct, count) over ranks."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def average_bn_stats(model: nn.Module, info: DistInfo) -> None:
    """Every rank's BatchNorm running statistics become their mean over the ranks (timm's `distribute_bn`, reduce).

    Each rank updates its own copy from its share of each batch (DDP broadcasts rank 0's only at the next forward),
    so after an epoch the ranks hold different statistics: each validated its shard with other weights than the ones
    rank 0 saves (a val loss 2.5949 in history.csv against 2.6077 from `eval` of the saved epoch, seen). After the
    mean, every rank validates, and rank 0 saves, the same model, its statistics drawn from every rank's images.
    """
    if not info.enabled:
        return
    buffers = [
        buf
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None
        for buf in (m.running_mean, m.running_var)
    ]
    if not buffers:
        return
    flat = torch.cat([buf.reshape(-1).float() for buf in buffers])  # one collective for all of them
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    for buf, mean in zip(buffers, flat.split([buf.numel() for buf in buffers])):
        buf.copy_(mean.view_as(buf))


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's value of `obj` on every rank (e.g. the run folder name)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
