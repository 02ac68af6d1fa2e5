"""Run an exported `.onnx` classifier with onnxruntime, behind the same interface as the checkpoint `Classifier`.

    clf = load_onnx("runs/trash/best.onnx")
    clf.predict("photo.jpg", topk=3)        # the checkpoint's labels and scores in fp32 (load(run, amp="off"))

Class names and preprocessing come from the file's own `metadata_props` (written by `resnetlab export`), so an
ONNX file is self-contained: no checkpoint, no sidecar JSON and no torch model code are needed to use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnetlab.engine.precision import Precision
from resnetlab.errors import ResnetlabError
from resnetlab.export import parse_metadata
from resnetlab.predict import Classifier


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, always with the CPU as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxModule(nn.Module):
    """An onnxruntime session as a (parameter-free) torch module: (B, C, H, W) fp32 -> logits (B, K) fp32."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        first = session.get_inputs()[0]
        self.input_name = first.name
        batch_dim = first.shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None  # None: dynamic

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        if self.fixed_batch is None:
            return torch.from_numpy(self._run(x))
        # A file exported with --no-dynamic-batch takes exactly `fixed_batch` images: run in chunks, padding the last.
        n, b = len(x), self.fixed_batch
        outputs = []
        for start in range(0, n, b):
            chunk = x[start : start + b]
            pad = b - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outputs.append(self._run(chunk)[: b - pad])
        return torch.from_numpy(np.concatenate(outputs))


class OnnxClassifier(Classifier):
    """A `Classifier` whose forward pass is an onnxruntime session.

    `model` is an `OnnxModule` wrapping `session` (the `onnxruntime.InferenceSession`); `metadata` is the dict embedded
    by `resnetlab export`. The export is fp32, so `precision` is fp32, contiguous, with inputs handed over on the CPU
    (onnxruntime copies them to the GPU itself when the CUDA provider runs).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ResnetlabError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT warns about unused initializers in exported graphs
        try:
            session = ort.InferenceSession(str(path), options, providers=list(providers or default_providers()))
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ResnetlabError(f"{path}: not a readable ONNX model ({reason})") from exc
        self.session = session
        self.metadata: dict[str, Any] = parse_metadata(session.get_modelmeta().custom_metadata_map, path)
        self.arch = self.metadata.get("arch")
        precision = Precision(torch.device("cpu"), amp_dtype=None, channels_last=False)
        super().__init__(
            OnnxModule(session), self.metadata["classes"], self.metadata["default_cfg"], precision, source=path
        )

    def __repr__(self) -> str:
        provider = self.session.get_providers()[0].replace("ExecutionProvider", "")
        return f"OnnxClassifier({self.arch}, {len(self.classes)} classes, onnxruntime {provider} fp32)"

    def predict_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W), normalised floats or uint8 pixels -> logits (B, K), float32 on the CPU."""
        return self.model(self.normalize(batch).contiguous()).float()


def load_onnx(path: str | os.PathLike, providers: Sequence[str] | None = None) -> OnnxClassifier:
    """An `OnnxClassifier` for a file written by `resnetlab export --format onnx`."""
    return OnnxClassifier(path, providers)
