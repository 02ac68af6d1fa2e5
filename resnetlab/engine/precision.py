"""Device, autocast dtype and memory-format decisions, made once and passed around as a small value."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from resnetlab.errors import ResnetlabError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
# Short names for the types training computes in (logs, `describe`, the benchmarks' peak lines).
DTYPE_NAMES: dict[torch.dtype, str] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> str:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo ("" where that cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """True when the CPU has AMX tiles for bf16 (Sapphire Rapids and later): bf16 products 4x fp32's or more there."""
    return "amx_bf16" in cpu_flags()


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    # oneDNN emulates bf16 on plain AVX-512, which is slower than fp32: require the native instructions.
    return "avx512_bf16" in cpu_flags() or cpu_has_amx()


def select_device(device: str | None = None) -> torch.device:
    """`None`/"auto" picks CUDA when present, else CPU; otherwise the named device, checked."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:  # torch's message lists twenty device types, most of which resnetlab never runs on
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ResnetlabError(f"--device {device}: not a device resnetlab trains on; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ResnetlabError(f"--device {device}: Apple's MPS is not available on this machine; use --device cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ResnetlabError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ResnetlabError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    return dev


@dataclass(frozen=True)
class Precision:
    """How to run a model: on which device, with which autocast dtype (None = fp32), in which memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def needs_grad_scaler(self) -> bool:
        return self.device.type == "cuda" and self.amp_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device, memory_format=self.memory_format)

    def prepare_batch(self, images: torch.Tensor) -> torch.Tensor:
        non_blocking = self.device.type == "cuda"
        return images.to(self.device, memory_format=self.memory_format, non_blocking=non_blocking)

    def describe(self) -> str:
        amp = DTYPE_NAMES[self.amp_dtype or torch.float32]
        return f"{self.device.type} {amp}{' channels_last' if self.channels_last else ''}"


def resolve_precision(device: str | None = None, amp: str = "auto", channels_last: bool | None = None) -> Precision:
    """Fast defaults: bf16 autocast on CPUs with native bf16, bf16 (or fp16) AMP on CUDA; channels_last on both."""
    if amp not in AMP_CHOICES:
        raise ResnetlabError(f"--amp {amp!r}: choose one of {', '.join(AMP_CHOICES)}")
    dev = select_device(device)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
    if amp == "auto":
        if dev.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif dev.type == "cpu":
            dtype = torch.bfloat16 if cpu_supports_bf16() else None
        else:
            dtype = None
    else:
        dtype = dtypes[amp]
    if dtype == torch.float16 and dev.type == "cpu":
        raise ResnetlabError("--amp fp16 is for CUDA; on CPU use --amp bf16 or --amp off")
    if channels_last is None:
        channels_last = dev.type in ("cpu", "cuda")
    return Precision(device=dev, amp_dtype=dtype, channels_last=channels_last)


@contextlib.contextmanager
def inference_mode(precision: Precision) -> Iterator[None]:
    """No-grad inference under the chosen autocast."""
    with torch.inference_mode(), precision.autocast():
        yield
