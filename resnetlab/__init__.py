"""resnetlab: residual networks done right, from a folder of photos to a served model."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models", "load"]


def __getattr__(name: str) -> Any:
    # Lazy: `resnetlab --help` must not pay for importing torch.
    if name in ("create_model", "list_models"):
        from resnetlab import models

        return getattr(models, name)
    raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")


def load(run_or_checkpoint: str, device: str | None = None, amp: str = "auto"):
    """Load a trained classifier from a run folder, a checkpoint or an exported ONNX file.

    `amp`: "auto" (bf16 on CPUs with native bf16, fp16/bf16 on CUDA), "bf16", "fp16" or "off" (fp32).
    """
    from resnetlab.predict import load as _load

    return _load(run_or_checkpoint, device=device, amp=amp)
