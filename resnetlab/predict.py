"""Inference: a `Classifier` built from a checkpoint, with the checkpoint's own preprocessing and fast settings.

    clf = resnetlab.load("runs/trash")            # a run folder, a checkpoint file, or an exported .onnx file
    clf.predict("photo.jpg", topk=3)               # [[{"label": "glass", "score": 0.91}, ...]]
    clf.predict_paths(["a.jpg", "broken.jpg"])     # [{"path", "predictions"}, {"path", "error"}]

Images are decoded in a few threads while the model runs on the previous batch; the model runs in eval mode under
`inference_mode`, channels_last, with bf16 autocast where the hardware has native bf16 (see `resolve_precision`).
Other back ends (ONNX Runtime) subclass `Classifier` and override `predict_logits`; everything else builds on it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from resnetlab.engine.precision import Precision, inference_mode, resolve_precision
from resnetlab.errors import ResnetlabError
from resnetlab.metrics import top_classes

ImageInput = str | os.PathLike | Image.Image
# Images per forward pass when the caller does not say. On the 2-core CPU, ResNet-50 in bf16 predicted 62.2 img/s
# at 16 and 57.5 at 32 (benchmarks/bench_predict.py): bigger batches spill the caches. GPUs want large batches.
DEFAULT_BATCH = {"cpu": 16, "cuda": 64}
Prediction = list[dict[str, Any]]  # [{"label": str, "score": float}, ...] best first


def _is_single(images: Any) -> bool:
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return images.ndim in (2, 3)  # (H, W), (H, W, C) or (C, H, W); 4-D is a batch
    return isinstance(images, (str, os.PathLike, Image.Image))


def _array_image(array: np.ndarray | torch.Tensor) -> Image.Image:
    """An in-memory image as PIL: a numpy (H, W) or (H, W, C) array, or a torch (C, H, W) tensor, as torchvision's
    `to_pil_image` reads them; floats are taken as 0..1."""
    from torchvision.transforms.functional import to_pil_image

    tensor = isinstance(array, torch.Tensor)
    if tensor:
        array = array.detach().cpu()
    floating = array.is_floating_point() if tensor else array.dtype.kind == "f"
    if floating and (array.numel() if tensor else array.size):
        low, high = float(array.min()), float(array.max())
        # Clamping once made a 0..255 float image (Keras' img_to_array) white, and a normalised tensor confident
        # nonsense, without a word.
        if low < -1e-6:
            raise ResnetlabError(
                f"a float image with values down to {low:g}: pass the image (uint8, or floats in 0..1), not a"
                " normalised tensor: predict normalises it itself"
            )
        if high > 1.0 + 1e-6:
            raise ResnetlabError(
                f"a float image with values up to {high:g}: floats are read as 0..1; pass uint8 pixels (or divide by"
                " 255)"
            )
    if tensor:
        array = array.clamp(0, 1) if floating else array  # within 1e-6 of 0..1 by now
    elif floating:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    try:
        return to_pil_image(array)
    except (TypeError, ValueError) as exc:
        layout = "numpy arrays are (H, W, C)" if isinstance(array, np.ndarray) else "tensors are (C, H, W)"
        raise ResnetlabError(f"an image array of shape {tuple(array.shape)} ({layout}): {exc}") from None


def _as_items(images: Any) -> list[ImageInput]:
    """Paths, PIL images and arrays as `predict` takes them, one list entry per image: a folder becomes its image
    files (as `resnetlab predict DIR` reads it), a 4-D array or tensor its images."""
    from resnetlab.data.folder import scan_images

    if isinstance(images, (bytes, bytearray, dict)) or not hasattr(images, "__iter__") and not _is_single(images):
        raise ResnetlabError(
            f"cannot predict a {type(images).__name__}: pass image paths or folders, PIL images, (H, W, C) arrays or"
            " (C, H, W) tensors, or a list of them"
            + (" (for encoded bytes: PIL.Image.open(io.BytesIO(data)))" if isinstance(images, bytes) else "")
        )
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim not in (2, 3, 4):
        raise ResnetlabError(f"an image array of shape {tuple(images.shape)}: expected 2-D, 3-D or a 4-D batch")
    items = [images] if _is_single(images) else list(images)
    out: list[ImageInput] = []
    for item in items:
        if isinstance(item, (np.ndarray, torch.Tensor)):
            out += [_array_image(a) for a in (item if item.ndim == 4 else [item])]
        elif isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            out += [str(p) for p in scan_images(item)]
        elif isinstance(item, (str, os.PathLike, Image.Image)):
            out.append(item)
        else:
            raise ResnetlabError(
                f"cannot predict a {type(item).__name__}: pass image paths or folders, PIL images, (H, W, C) arrays "
                "or (C, H, W) tensors"
            )
    return out


def _describe(item: ImageInput) -> str:
    return str(item) if not isinstance(item, Image.Image) else f"<PIL image {item.size[0]}x{item.size[1]}>"


def _open(item: ImageInput, draft_size: int | None = None) -> Image.Image:
    """A PIL image in RGB, from a path (EXIF orientation applied) or an image already in memory.

    `draft_size`: the short side the transform resizes to; large JPEGs are decoded at reduced size, above it.
    """
    if isinstance(item, Image.Image):
        from resnetlab.data.images import to_rgb

        return to_rgb(item)
    from resnetlab.data.images import open_image

    return open_image(item, draft_size=draft_size)


def resize_short_side(default_cfg: dict[str, Any], img_size: int | None = None) -> int:
    """The short side the eval transform resizes to before its centre crop: `size / crop_pct`, rounded down."""
    size = img_size or min(default_cfg["input_size"][-2:])
    return math.floor(size / float(default_cfg.get("crop_pct") or 1.0))


def _failure_reason(exc: BaseException) -> str:
    # ImageError already names the file; keep the reason one line either way.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if isinstance(exc, ResnetlabError) else f"{type(exc).__name__}: {text}"


class Classifier:
    """A trained model plus everything needed to use it: class names, preprocessing, device and precision.

    Attributes: `model` (eval mode), `classes`, `transform` (PIL image -> normalised (C, H, W) tensor),
    `default_cfg`, `precision`, `source` (the file it was loaded from, if any).
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        default_cfg: dict[str, Any] | None = None,
        precision: Precision | None = None,
        img_size: int | None = None,
        source: str | os.PathLike | None = None,
    ) -> None:
        from resnetlab.data.transforms import BatchNormalize, eval_transform_from_cfg
        from resnetlab.engine.allocator import keep_freed_memory

        keep_freed_memory()  # batches and activations reuse heap memory instead of fresh page-faulted mappings

        self.precision = precision or resolve_precision()
        self.model = self.precision.prepare_model(model.eval())
        self.classes = list(classes)
        self.default_cfg = dict(default_cfg if default_cfg is not None else model.default_cfg)
        self.transform = eval_transform_from_cfg(self.default_cfg, img_size=img_size)
        # Batches are built from uint8 pixels and normalised once per batch (several times cheaper than per image).
        self.pixel_transform = eval_transform_from_cfg(self.default_cfg, img_size=img_size, normalize=False)
        self.normalize = BatchNormalize(self.transform.mean, self.transform.std)
        self.source = Path(source) if source is not None else None
        self.draft_size = getattr(self.transform, "decode_size", None) or resize_short_side(self.default_cfg, img_size)
        # Decoding runs in threads (PIL and torch release the GIL) while the model works on the previous batch.
        self.num_threads = max(1, min(4, os.cpu_count() or 1))
        self.batch_size = DEFAULT_BATCH.get(self.precision.device.type, 32)

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: dict[str, Any],
        device: str | None = None,
        amp: str = "auto",
        source: str | os.PathLike | None = None,
    ) -> Classifier:
        from resnetlab.engine.checkpoint import model_from_checkpoint

        model = model_from_checkpoint(ckpt)
        classes = ckpt.get("classes") or [str(i) for i in range(ckpt["num_classes"])]
        clf = cls(model, classes, model.default_cfg, resolve_precision(device, amp=amp), source=source)
        clf.arch = ckpt.get("arch")
        return clf

    def __repr__(self) -> str:
        arch = getattr(self, "arch", None) or type(self.model).__name__
        return f"{type(self).__name__}({arch}, {len(self.classes)} classes, {self.precision.describe()})"

    # -- tensors in, scores out ------------------------------------------------------------------------------------

    def predict_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W), normalised floats or uint8 pixels -> logits (B, K), float32 on the CPU."""
        with inference_mode(self.precision):
            x = self.normalize(batch.to(self.precision.device))  # uint8 -> normalised float32; floats pass through
            logits = self.model(self.precision.prepare_batch(x))
        return logits.float().cpu()

    def predict_scores(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Log-probabilities (B, K); with `tta` the log of the mean softmax of each image and its horizontal flip."""
        logp = torch.log_softmax(self.predict_logits(batch), dim=1)
        if not tta:
            return logp
        flipped = torch.log_softmax(self.predict_logits(batch.flip(-1)), dim=1)
        return torch.logsumexp(torch.stack([logp, flipped]), dim=0) - torch.log(torch.tensor(2.0))

    # -- images in, batches out ------------------------------------------------------------------------------------

    def preprocess(self, item: ImageInput) -> torch.Tensor:
        """One image (path or PIL) -> normalised (C, H, W) tensor, decoded exactly as `predict` does."""
        return self.normalize(self.pixels(item)[None])[0]

    def pixels(self, item: ImageInput) -> torch.Tensor:
        """One image (path or PIL) -> the uint8 (C, H, W) tensor the model sees before normalisation."""
        return self.pixel_transform(_open(item, self.draft_size))

    def iter_batches(
        self, items: Sequence[ImageInput], batch_size: int | None = None
    ) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
        """Yield `(indices, uint8 images (B, C, H, W) or None, failures [(index, reason)])`, one batch at a time.

        The next batch is decoded in threads while the caller runs the model on this one; memory stays bounded
        to two batches whatever the number of inputs.
        """
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise ResnetlabError(f"--batch-size {batch_size}: must be at least 1")
        starts = range(0, len(items), batch_size)
        with ThreadPoolExecutor(self.num_threads, thread_name_prefix="resnetlab-decode") as pool:
            pending: list[tuple[int, Future]] | None = None
            for start in starts:
                stop = min(start + batch_size, len(items))
                submitted = [(i, pool.submit(self.pixels, items[i])) for i in range(start, stop)]
                if pending is not None:
                    yield self._collect(pending)
                pending = submitted
            if pending is not None:
                yield self._collect(pending)

    @staticmethod
    def _collect(futures: list[tuple[int, Future]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
        indices, tensors, failures = [], [], []
        for i, future in futures:
            try:
                tensors.append(future.result())
                indices.append(i)
            except Exception as exc:  # one unreadable file must not stop the others
                failures.append((i, _failure_reason(exc)))
        from resnetlab.data.loader import stack_channels_last

        return indices, (stack_channels_last(tensors) if tensors else None), failures

    def scores_for(
        self, items: Sequence[ImageInput], batch_size: int | None = None, tta: bool = False
    ) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
        """Log-probabilities (N_ok, K) for every readable input, their indices into `items`, and the failures."""
        all_scores, ok, failed = [], [], []
        for indices, batch, failures in self.iter_batches(items, batch_size):
            failed += failures
            if batch is not None:
                all_scores.append(self.predict_scores(batch, tta=tta))
                ok += indices
        scores = torch.cat(all_scores) if all_scores else torch.empty(0, len(self.classes))
        return scores, ok, failed

    # -- the user-facing API ---------------------------------------------------------------------------------------

    def topk(self, log_probs: torch.Tensor, k: int = 5) -> list[Prediction]:
        """Best-first `[{"label", "score"}]` lists from log-probabilities (N, K); score is the probability."""
        k = max(1, min(k, len(self.classes)))
        probs, idx = top_classes(log_probs.exp(), k)  # ties to the lower index, as `eval` and validation
        return [
            [{"label": self.classes[j], "score": float(p)} for p, j in zip(prow.tolist(), irow.tolist())]
            for prow, irow in zip(probs, idx)
        ]

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        topk: int = 5,
        batch_size: int | None = None,
        tta: bool = False,
    ) -> list[Prediction]:
        """Top-k predictions for each image, always a list with one entry per image. Images: paths, folders (their
        image files, sorted), PIL images, numpy (H, W, C) arrays or torch (C, H, W) tensors (4-D: a batch of them).

        An unreadable file raises `ResnetlabError`; use `predict_paths` to get per-file errors instead.
        """
        if not isinstance(topk, int) or topk < 1:
            raise ResnetlabError(f"topk {topk!r}: must be a whole number of at least 1")
        items = _as_items(images)
        scores, _, failed = self.scores_for(items, batch_size, tta)
        if failed:
            index, reason = failed[0]
            name = _describe(items[index])
            raise ResnetlabError(reason if name in reason else f"{name}: {reason}")
        return self.topk(scores, topk)

    def predict_paths(
        self,
        paths: Sequence[str | os.PathLike],
        topk: int = 5,
        batch_size: int | None = None,
        tta: bool = False,
    ) -> list[dict[str, Any]]:
        """One result per path, in order: `{"path", "predictions": [...]}` or `{"path", "error": reason}`."""
        if isinstance(paths, (str, os.PathLike)):  # one path, not a sequence of its characters
            paths = [paths]
        scores, ok, failed = self.scores_for(list(paths), batch_size, tta)
        results: list[dict[str, Any]] = [{} for _ in paths]
        for i, preds in zip(ok, self.topk(scores, topk)):
            results[i] = {"path": str(paths[i]), "predictions": preds}
        for i, reason in failed:
            results[i] = {"path": str(paths[i]), "error": reason}
        return results


def _load_onnx(path: Path, device: str | None, amp: str) -> Classifier:
    """An exported ONNX file on onnxruntime: fp32 always, on the CPU or (where this onnxruntime has it) CUDA."""
    from resnetlab.engine.precision import select_device

    if amp not in ("auto", "off"):
        raise ResnetlabError(f"--amp {amp}: an ONNX file runs in fp32 on onnxruntime; --amp is for checkpoints")
    dev = select_device(device)  # refuses unknown names, and CUDA where there is none
    try:
        import onnxruntime as ort

        from resnetlab.onnx_runtime import default_providers, load_onnx
    except ModuleNotFoundError as exc:
        raise ResnetlabError(
            f"{path}: running ONNX files needs {exc.name}: pip install 'resnetlab[export]', or pass the run folder or"
            " checkpoint instead"
        ) from exc
    if dev.type == "cpu":
        providers = ["CPUExecutionProvider"]
    elif "CUDAExecutionProvider" in ort.get_available_providers():
        providers = default_providers()
    else:
        raise ResnetlabError(
            f"--device {device}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu); use --device cpu"
        )
    return load_onnx(path, providers)


def load(
    run_or_checkpoint: str | os.PathLike,
    device: str | None = None,
    amp: str = "auto",
) -> Classifier:
    """A `Classifier` from a run folder (its best.pt), a checkpoint file, or an exported `.onnx` file."""
    path = Path(run_or_checkpoint)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise ResnetlabError(f"{path}: no such ONNX file")
        return _load_onnx(path, device, amp)
    from resnetlab.engine.checkpoint import read_model_file, resolve_checkpoint_path

    ckpt_path = resolve_checkpoint_path(path)
    return Classifier.from_checkpoint(read_model_file(ckpt_path), device=device, amp=amp, source=ckpt_path)
