"""resnetlab: residual networks done right, from a folder of photos to a served model."""

from resnetlab.models import create_model, list_models

__version__ = "0.1.0"


def load(run_or_checkpoint: str, device: str | None = None):
    """Load a trained classifier from a run folder, a checkpoint or an exported ONNX file."""
    from resnetlab.predict import load as _load

    return _load(run_or_checkpoint, device=device)


__all__ = ["__version__", "create_model", "list_models", "load"]
