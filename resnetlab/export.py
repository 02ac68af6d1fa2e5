"""Export a checkpoint to ONNX or TorchScript, then prove the exported file gives the same answers.

    result = export_model("runs/trash", "onnx")        # runs/trash/best.onnx + best.onnx.json
    print(result.parity.describe())                     # max |diff| and top-1 agreement on real photos

Every exported file carries what is needed to use it correctly: class names and preprocessing (input size, crop_pct,
mean, std, interpolation, arch), inside the file (ONNX `metadata_props`, TorchScript `_extra_files`) and beside it as
`<file>.json`. After writing, the exported model is loaded back the way users load it (`load_onnx`, `torch.jit.load`),
its preprocessing is rebuilt from the embedded metadata only, and its logits are compared with the eager model's on real
images. A file that disagrees is never left at the requested path.

Exporter choice: torch 2.14 defaults to the `torch.export`-based ONNX exporter ("dynamo", uses onnxscript). Its lowest
implemented opset is 18, and asking it for less triggers an automatic down-conversion that fails for ResNets (the
`axes` input of Reduce ops), so opset 18 is the default: onnxruntime supports it since 1.14. Opsets below 18 use the
legacy TorchScript-based exporter, which also serves as a fallback if `torch.export` cannot capture a model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.errors import ResnetlabError

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
_FORMAT_NAMES = {"onnx": "an ONNX", "torchscript": "a TorchScript"}
# File endings that say which format a name holds: `--out model.pt` without --format means TorchScript, and a name of
# one format with the other refused (ONNX bytes in a .pt fail much later, in whatever loads them).
FORMAT_OF_SUFFIX = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pth": "torchscript",
    ".ts": "torchscript",
    ".jit": "torchscript",
}
METADATA_FORMAT = "resnetlab-export"
METADATA_KEY = "resnetlab"  # ONNX metadata_props key / TorchScript extra file holding the full JSON
TORCHSCRIPT_EXTRA_FILE = "resnetlab.json"
PREPROCESS_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation")
DEFAULT_OPSET = 18
MIN_OPSET = 13
DYNAMO_MIN_OPSET = 18
MAX_BATCH = 4096  # upper bound of the dynamic batch axis (torch.export needs one)
MAX_CHECK_IMAGES = 8
# Tolerance on |logit diff|, relative to the logit scale (max |eager logit|, at least 1). The exported graph runs the
# same fp32 maths with other kernels (MLAS vs oneDNN, fused vs unfused BN), which changes summation order: relative
# errors are ~1e-6 per layer and ~1e-5 after 50 layers. 1e-3 leaves 100x headroom for that, while a real export bug
# (wrong preprocessing, train-mode BN, dropped layer, wrong weights) moves logits by a sizeable fraction of their scale.
PARITY_RTOL = 1e-3


# -- metadata ----------------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so metadata survives a JSON round trip unchanged."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def export_metadata(ckpt: dict[str, Any], model: nn.Module, fmt: str, **extra: Any) -> dict[str, Any]:
    """Everything a user of the exported file needs: classes, preprocessing, what it came from."""
    from resnetlab import __version__

    cfg = getattr(model, "default_cfg", None) or ckpt.get("default_cfg") or {}
    missing = [k for k in PREPROCESS_KEYS if k not in cfg]
    if missing:
        raise ResnetlabError(f"checkpoint's default_cfg lacks {', '.join(missing)}; cannot describe preprocessing")
    classes = ckpt.get("classes") or [str(i) for i in range(ckpt["num_classes"])]
    return _plain(
        {
            "format": METADATA_FORMAT,
            "version": 1,
            "export_format": fmt,
            "arch": ckpt.get("arch"),
            "num_classes": len(classes),
            "classes": classes,
            "default_cfg": {k: cfg[k] for k in PREPROCESS_KEYS},
            "input_name": "input",
            "output_name": "logits",
            "output": "logits: apply softmax for probabilities",
            "resnetlab_version": __version__,
            "torch_version": torch.__version__.split("+")[0],
            **extra,
        }
    )


def flat_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """String key/values for ONNX `metadata_props`: the full JSON under "resnetlab", and readable single fields."""
    flat = {METADATA_KEY: json.dumps(meta)}
    flat.update({k: json.dumps(meta["default_cfg"][k]) for k in PREPROCESS_KEYS})
    flat["classes"] = json.dumps(meta["classes"])
    flat["arch"] = str(meta.get("arch"))
    return flat


def parse_metadata(props: dict[str, str], source: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict back from `flat_metadata`'s output (or a TorchScript extra file's JSON)."""
    text = props.get(METADATA_KEY)
    if not text:
        raise ResnetlabError(
            f"{source}: no resnetlab metadata (class names, preprocessing) in this file; "
            "export it with `resnetlab export`"
        )
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResnetlabError(f"{source}: damaged resnetlab metadata ({exc}); export the model again") from exc
    if meta.get("format") != METADATA_FORMAT or not meta.get("classes") or "default_cfg" not in meta:
        raise ResnetlabError(f"{source}: resnetlab metadata lacks classes or preprocessing; export the model again")
    return meta


def write_sidecar(path: Path, meta: dict[str, Any]) -> Path:
    from resnetlab.paths import write_json

    return write_json(path.with_name(path.name + ".json"), meta)


# -- writers -----------------------------------------------------------------------------------------------------------


def _export_onnx_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic else None
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,  # one self-contained file (fine below 2 GB; the largest resnetlab model is ~0.5 GB)
            verbose=False,
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
        )


def _export_onnx_legacy(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices for the legacy exporter
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any], opset: int, dynamic: bool
) -> str:
    """Write `model` (fp32, eval) to `path` with `meta` in `metadata_props`; returns the exporter used."""
    import onnx

    exporter = "dynamo"
    if opset >= DYNAMO_MIN_OPSET:
        try:
            _export_onnx_dynamo(model, example, path, opset, dynamic)
        except Exception as exc:  # torch.export cannot capture some code; the legacy tracer often can
            warnings.warn(
                f"torch.export-based ONNX export failed ({type(exc).__name__}); using the legacy exporter",
                stacklevel=2,
            )
            exporter = "torchscript"
    else:
        exporter = "torchscript"
    if exporter == "torchscript":
        _export_onnx_legacy(model, example, path, opset, dynamic)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, flat_metadata({**meta, "exporter": exporter}))
    proto.doc_string = f"resnetlab {meta.get('arch')} classifier: {meta['num_classes']} classes"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return exporter


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> str:
    """Trace `model` (fp32, eval) and save it with `meta` as the extra file `resnetlab.json`."""
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but TorchScript files still load in libtorch (C++),
        # LibTorch-Lite and older PyTorch releases, which is why users ask for them. Tracing (not scripting) copes
        # with every resnetlab model's Python control flow; in eval mode each model is a fixed graph.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        traced = torch.jit.freeze(traced)  # folds BN into convs: a leaner, inference-only graph
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA_FILE: json.dumps(meta)})
    return "trace"


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript file written by `export_torchscript`, with its metadata."""
    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice; see export_torchscript
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ResnetlabError(f"{path}: not a readable TorchScript file ({type(exc).__name__})") from exc
    props = {METADATA_KEY: extra[TORCHSCRIPT_EXTRA_FILE]}
    if isinstance(props[METADATA_KEY], bytes):
        props[METADATA_KEY] = props[METADATA_KEY].decode("utf-8")
    return module.eval(), parse_metadata(props, path)


# -- parity ------------------------------------------------------------------------------------------------------------


@dataclass
class ParityReport:
    """Eager vs exported logits on the same real images."""

    images: list[str]
    max_abs_diff: float
    logit_scale: float
    tolerance: float
    top1_agree: int
    ties: list[str] = field(default_factory=list)  # top-1 differs, but eager's two logits are within tolerance
    mismatches: list[str] = field(default_factory=list)  # top-1 differs for real
    problems: list[str] = field(default_factory=list)  # metadata / preprocessing disagreements

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.problems and self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        n = len(self.images)
        text = (
            f"parity on {n} real image{'s' * (n != 1)}: max |logit diff| {self.max_abs_diff:.3g} "
            f"(tolerance {self.tolerance:.3g} = {self.tolerance / self.logit_scale:.3g} x logit scale"
            f" {self.logit_scale:.3g}), "
            f"top-1 agreement {self.top1_agree}/{n}"
        )
        if self.ties:
            text += (
                f" ({len(self.ties)} exact tie{'s' * (len(self.ties) != 1)} within tolerance: {', '.join(self.ties)})"
            )
        return text


def default_check_images(ckpt: dict[str, Any]) -> list[Path]:
    """Real photos for the parity check: the shared sample photos, else images from the checkpoint's data root."""
    from resnetlab.data.folder import scan_images
    from resnetlab.paths import shared_path

    candidates = [shared_path("images")]
    root = (ckpt.get("data") or {}).get("root")
    if root:
        candidates.append(Path(root))
    for folder in candidates:
        if folder.is_dir():
            found = scan_images([folder], recursive=True)
            if found:
                step = max(1, len(found) // MAX_CHECK_IMAGES)  # spread over classes rather than the first folder
                return found[::step][:MAX_CHECK_IMAGES]
    raise ResnetlabError(
        "no photos found for the parity check (looked in " + ", ".join(str(c) for c in candidates) + "); "
        "pass --check-images DIR_OR_FILES"
    )


def resolve_check_images(check_images: Sequence[str | os.PathLike] | None, ckpt: dict[str, Any]) -> list[Path]:
    if not check_images:
        return default_check_images(ckpt)
    from resnetlab.data.folder import scan_images

    for item in check_images:
        if not Path(item).exists():
            raise ResnetlabError(f"--check-images {item}: no such file or folder")
    found = scan_images([Path(p) for p in check_images], recursive=True)
    if not found:
        raise ResnetlabError(f"--check-images {' '.join(map(str, check_images))}: no images found there")
    return found[: 4 * MAX_CHECK_IMAGES]


def _preprocess(paths: Sequence[Path], transform: Callable) -> torch.Tensor:
    from resnetlab.data.images import open_image

    return torch.stack([transform(open_image(p)) for p in paths])  # (N, C, H, W)


def check_parity(
    eager: nn.Module,
    eager_cfg: dict[str, Any],
    classes: Sequence[str],
    run_exported: Callable[[torch.Tensor], torch.Tensor],
    exported_meta: dict[str, Any],
    images: Sequence[Path],
    rtol: float = PARITY_RTOL,
) -> ParityReport:
    """Compare eager and exported logits on `images`.

    Each side preprocesses with its OWN description of the preprocessing (the checkpoint's default_cfg vs the
    metadata embedded in the exported file), so a wrong crop or mean in the metadata shows up; the model comparison
    itself then runs both models on the identical batch.
    """
    from resnetlab.data.transforms import eval_transform_from_cfg

    problems = []
    if list(exported_meta["classes"]) != list(classes):
        problems.append("class names stored in the export differ from the checkpoint's")
    batch = _preprocess(images, eval_transform_from_cfg(eager_cfg))
    exported_batch = _preprocess(images, eval_transform_from_cfg(exported_meta["default_cfg"]))
    if exported_batch.shape != batch.shape or not torch.equal(exported_batch, batch):
        problems.append("preprocessing rebuilt from the export's metadata gives different input tensors")

    with torch.inference_mode():
        expected = eager(batch).float()  # (N, K), fp32, no autocast
    got = run_exported(batch).float()
    if got.shape != expected.shape:
        raise ResnetlabError(f"exported model returns shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    single = run_exported(batch[:1]).float()  # a different batch size exercises the (dynamic) batch axis
    diff = max(float((got - expected).abs().max()), float((single - expected[:1]).abs().max()))
    scale = max(1.0, float(expected.abs().max()))
    tolerance = rtol * scale

    names = [Path(p).name for p in images]
    e_top, g_top = expected.argmax(1), got.argmax(1)
    agree, ties, mismatches = 0, [], []
    for i, name in enumerate(names):
        if e_top[i] == g_top[i]:
            agree += 1
        elif float(expected[i, e_top[i]] - expected[i, g_top[i]]) <= tolerance:
            ties.append(name)  # two classes scored equal up to float noise; either is a correct answer
        else:
            mismatches.append(f"{name}: eager {classes[e_top[i]]}, exported {classes[g_top[i]]}")
    return ParityReport(names, diff, scale, tolerance, agree, ties, mismatches, problems)


# -- the command's work ------------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    fmt: str
    exporter: str
    parity: ParityReport


def default_output(ckpt_path: Path, fmt: str) -> Path:
    """Beside the checkpoint: runs/x/best.pt -> runs/x/best.onnx (as Ultralytics does)."""
    return ckpt_path.with_name(ckpt_path.stem + SUFFIXES[fmt])


def format_for(out: str | os.PathLike | None, fmt: str | None = None) -> str:
    """The export format: `fmt` if given, else the one `out`'s ending names, else ONNX."""
    if fmt:
        return fmt
    return FORMAT_OF_SUFFIX.get(Path(out).suffix.lower(), "onnx") if out else "onnx"


def output_path(out: str | os.PathLike | None, ckpt_path: Path, fmt: str) -> Path:
    """Where the export goes: `out`, a file of the default name inside `out` when it is a folder (or a name without
    an ending, made a folder), or beside the checkpoint; a name that says the other format is refused."""
    if not out:
        return default_output(ckpt_path, fmt)
    path = Path(out)
    if path.is_dir() or not path.suffix:  # a folder, or one to make: a file without an ending would be unreadable
        return path / default_output(ckpt_path, fmt).name
    named = FORMAT_OF_SUFFIX.get(path.suffix.lower())
    if named and named != fmt:
        fix = path.with_name(path.stem + SUFFIXES[fmt]).name
        raise ResnetlabError(
            f"--out {path}: {_FORMAT_NAMES[named]} file name for {_FORMAT_NAMES[fmt]} export; name it {fix} or pass "
            f"--format {named}"
        )
    return path


def _exported_runner(fmt: str, path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """Load the written file back the way a user would; returns (batch -> logits, embedded metadata)."""
    if fmt == "onnx":
        from resnetlab.onnx_runtime import load_onnx

        clf = load_onnx(path, providers=["CPUExecutionProvider"])
        return clf.predict_logits, clf.metadata
    module, meta = load_torchscript(path)

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(batch)

    return run, meta


def require_modules(names: Sequence[str], purpose: str) -> None:
    """A one-line error naming the optional packages `purpose` needs, before any slow work."""
    import importlib

    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ResnetlabError(f"{purpose} needs {', '.join(missing)}: pip install 'resnetlab[export]'")


def export_model(
    run_or_checkpoint: str | os.PathLike,
    fmt: str = "onnx",
    out: str | os.PathLike | None = None,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    check_images: Sequence[str | os.PathLike] | None = None,
    rtol: float = PARITY_RTOL,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export, verify parity on real photos, and only then put the file at `out`.

    Raises `ResnetlabError` (the file kept as `<out>.parity-failed` for inspection) when parity fails.
    """
    from resnetlab.engine.checkpoint import model_from_checkpoint, read_model_file, resolve_checkpoint_path

    if fmt not in FORMATS:
        raise ResnetlabError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_modules(("onnx", "onnxscript", "onnxruntime"), "ONNX export (and its parity check)")
        import onnx

        max_opset = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= opset <= max_opset:
            raise ResnetlabError(f"--opset {opset}: choose {MIN_OPSET}..{max_opset} (default {DEFAULT_OPSET})")
    ckpt_path = resolve_checkpoint_path(run_or_checkpoint)
    ckpt = read_model_file(ckpt_path)  # akamaster's CIFAR-10 .th files too, as predict reads them
    images = resolve_check_images(check_images, ckpt)  # fail early, before the slow export
    out = output_path(out, ckpt_path, fmt)
    partial = out.with_name(f".{out.name}.partial")  # written, checked, then renamed to `out`
    try:  # fail now, not after the slow export
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.touch()
        partial.unlink()
    except OSError as exc:
        raise ResnetlabError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose another --out") from exc

    model = model_from_checkpoint(ckpt).float().eval()  # fp32, contiguous, eval-mode BN/dropout, no autocast
    classes = ckpt.get("classes") or [str(i) for i in range(ckpt["num_classes"])]
    dynamic_batch = dynamic_batch or fmt != "onnx"  # a traced TorchScript module takes any batch size
    extra = {"source": str(ckpt_path.resolve()), "dynamic_batch": dynamic_batch}
    if fmt == "onnx":
        extra["opset"] = opset
    meta = export_metadata(ckpt, model, fmt, **extra)
    example = torch.randn(2 if dynamic_batch else 1, *meta["default_cfg"]["input_size"])  # batch 2: not specialised

    log(f"exporting {meta['arch']} ({len(classes)} classes) from {ckpt_path} to {fmt} ...")
    try:
        if fmt == "onnx":
            exporter = export_onnx(model, example, partial, meta, opset, dynamic_batch)
        else:
            exporter = export_torchscript(model, example, partial, meta)
        run_exported, exported_meta = _exported_runner(fmt, partial)
        report = check_parity(model, meta["default_cfg"], classes, run_exported, exported_meta, images, rtol)
    except ResnetlabError:
        partial.unlink(missing_ok=True)
        raise
    except Exception as exc:
        partial.unlink(missing_ok=True)
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ResnetlabError(f"{fmt} export of {ckpt_path} failed: {type(exc).__name__}: {reason}") from exc

    log(report.describe())
    if not report.ok:
        failed = out.with_name(out.name + ".parity-failed")
        os.replace(partial, failed)
        details = "; ".join(report.problems + report.mismatches[:3])
        if report.max_abs_diff > report.tolerance:
            details = "; ".join(
                filter(None, [f"max |logit diff| {report.max_abs_diff:.3g} > {report.tolerance:.3g}", details])
            )
        raise ResnetlabError(
            f"exported model disagrees with the checkpoint ({details}); kept for inspection as {failed}"
        )
    try:
        os.replace(partial, out)
    except OSError as exc:  # a folder created at `out` meanwhile, say: leave no hidden partial file behind
        partial.unlink(missing_ok=True)
        raise ResnetlabError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose another --out") from exc
    sidecar = write_sidecar(out, {**exported_meta, "exporter": exporter, "parity": _parity_record(report)})
    return ExportResult(out, sidecar, fmt, exporter, report)


def _parity_record(report: ParityReport) -> dict[str, Any]:
    return {
        "images": report.images,
        "max_abs_diff": report.max_abs_diff,
        "tolerance": report.tolerance,
        "top1_agree": report.top1_agree,
    }
