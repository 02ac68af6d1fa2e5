"""Pretrained weights: torchvision's ImageNet files by name, or a local file (`.pth`, `.safetensors`, checkpoint).

`load_pretrained(model, arch, pretrained, num_classes)` is what `create_model(..., pretrained=...)` calls:

    "imagenet"   download torchvision's file for `arch` into the torch hub cache (`$TORCH_HOME/hub/checkpoints`),
                 check the sha256 prefix in its name, load it and adopt its preprocessing (`default_cfg`)
    PATH         a torchvision/timm state dict (also wrapped in {"state_dict"|"model": ...}, with `module.` prefixes),
                 a `.safetensors` file, a resnetlab checkpoint, or a CIFAR-10 ResNet file (`linear.` head, no
                 `num_batches_tracked`)

A head of a different size (`fc`, `classifier`, GoogLeNet's `aux*.fc2`) is skipped by name and keeps its fresh
initialisation; the skipped keys are logged and returned. Any other missing, unexpected or mis-shaped key is an error.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.download import download, file_digest
from resnetlab.errors import ResnetlabError
from resnetlab.models._base import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

WEIGHTS_URL_ENV = "RESNETLAB_WEIGHTS_URL"  # base URL override, e.g. a mirror or a test server
TORCHVISION_URL = "https://download.pytorch.org/models/"

# Preprocessing that travels with torchvision's weights: the old recipes evaluate at resize 256 / crop 224, the
# "new training recipe" files (IMAGENET1K_V2, and ResNeXt-101 64x4d) at resize 232 / crop 224; all bilinear.
_CFG_RESIZE256 = {"input_size": (3, 224, 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 0.875,
           "interpolation": "bilinear"}  # fmt: skip
_CFG_RESIZE232 = {**_CFG_RESIZE256, "crop_pct": 224 / 232}
CIFAR_AKAMASTER_CFG = {"input_size": (3, 32, 32), "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 1.0}


@dataclass(frozen=True)
class WeightSource:
    """One downloadable file: torchvision names it `<arch>-<first 8 hex digits of its sha256>.pth`."""

    file: str
    tag: str  # torchvision's enum name, for the record
    cfg: Mapping[str, Any]
    model_attrs: Mapping[str, Any] = field(default_factory=dict)  # attributes the weights expect on the model

    @property
    def sha256_prefix(self) -> str:
        prefix = hash_prefix_from_name(self.file)
        assert prefix, self.file
        return prefix

    def url(self) -> str:
        base = os.environ.get(WEIGHTS_URL_ENV) or TORCHVISION_URL
        return base.rstrip("/") + "/" + self.file


# torchvision's DEFAULT weights for each architecture (URLs as in torchvision/models/{resnet,googlenet,mobilenetv2}.py).
IMAGENET_WEIGHTS: dict[str, WeightSource] = {
    "resnet18": WeightSource("resnet18-f37072fd.pth", "IMAGENET1K_V1", _CFG_RESIZE256),
    "resnet34": WeightSource("resnet34-b627a593.pth", "IMAGENET1K_V1", _CFG_RESIZE256),
    "resnet50": WeightSource("resnet50-11ad3fa6.pth", "IMAGENET1K_V2", _CFG_RESIZE232),
    "resnet101": WeightSource("resnet101-cd907fc2.pth", "IMAGENET1K_V2", _CFG_RESIZE232),
    "resnet152": WeightSource("resnet152-f82ba261.pth", "IMAGENET1K_V2", _CFG_RESIZE232),
    "wide_resnet50_2": WeightSource("wide_resnet50_2-9ba9bcbe.pth", "IMAGENET1K_V2", _CFG_RESIZE232),
    "wide_resnet101_2": WeightSource("wide_resnet101_2-d733dc28.pth", "IMAGENET1K_V2", _CFG_RESIZE232),
    "resnext50_32x4d": WeightSource("resnext50_32x4d-1a0047aa.pth", "IMAGENET1K_V2", _CFG_RESIZE232),
    "resnext101_32x8d": WeightSource("resnext101_32x8d-110c445d.pth", "IMAGENET1K_V2", _CFG_RESIZE232),
    "resnext101_64x4d": WeightSource("resnext101_64x4d-173b62eb.pth", "IMAGENET1K_V1", _CFG_RESIZE232),
    # Ported from TF: expects inputs re-scaled from ImageNet normalisation to [-1, 1] (torchvision's transform_input).
    "googlenet": WeightSource("googlenet-1378be20.pth", "IMAGENET1K_V1", _CFG_RESIZE256, {"transform_input": True}),
    "mobilenet_v2": WeightSource("mobilenet_v2-7ebf99e0.pth", "IMAGENET1K_V2", _CFG_RESIZE232),
}

_HASH_NAME = re.compile(r"^(?P<name>.+)-(?P<hash>[0-9a-f]{8,64})$")
_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_AUX_HEADS = ("aux1.fc2.", "aux2.fc2.")  # GoogLeNet's auxiliary classifiers end in a num_classes-wide Linear


@dataclass
class LoadResult:
    """What `load_pretrained` did: where the weights came from and which keys it did not load."""

    source: str
    skipped: list[str] = field(default_factory=list)  # file keys left out (a head of another size, unused aux heads)
    adapted: list[str] = field(default_factory=list)  # stem convs summed/tiled to the model's in_chans
    fresh: list[str] = field(default_factory=list)  # model modules the file has no weights for (GoogLeNet's aux heads)


# ----------------------------------------------------------------------------------------------------- hashing


def hash_prefix_from_name(file_name: str) -> str | None:
    """`resnet18-f37072fd.pth` -> "f37072fd"; None when the name carries no hash."""
    m = _HASH_NAME.match(Path(file_name).name.split(".", 1)[0])
    return m["hash"] if m else None


def name_without_hash(stem: str) -> str:
    """`resnet20-12fca82f` -> `resnet20`; a stem without a hub-style sha256 suffix as it is."""
    m = _HASH_NAME.match(stem)
    return m["name"] if m else stem


def check_name_hash(path: Path, known_names: set[str] | None = None) -> None:
    """Verify the sha256 prefix in a `<name>-<hex>.<ext>` file name; no-op for names without one.

    With `known_names`, only names whose left part is a model name count (a date like `run-20240101.pt` is not a hash).
    """
    m = _HASH_NAME.match(path.name.split(".", 1)[0])
    if not m or (known_names is not None and m["name"] not in known_names):
        return
    actual = file_digest(path)
    if not actual.startswith(m["hash"]):
        raise ResnetlabError(
            f"{path}: sha256 starts with {actual[: len(m['hash'])]}, but the file name says {m['hash']}; "
            "the file is corrupt or renamed, get a fresh copy"
        )


# ---------------------------------------------------------------------------------------------------- download


def download_imagenet_weights(arch: str) -> Path:
    """The cached file for `arch`'s ImageNet weights, downloaded (and verified) on first use."""
    if arch not in IMAGENET_WEIGHTS:
        have = ", ".join(IMAGENET_WEIGHTS)
        raise ResnetlabError(
            f"no ImageNet weights for {arch!r} (available for: {have}); pass a weights file with --pretrained PATH"
        )
    src = IMAGENET_WEIGHTS[arch]
    dst = Path(torch.hub.get_dir()) / "checkpoints" / src.file
    if dst.is_file():
        if file_digest(dst).startswith(src.sha256_prefix):
            return dst
        log.warning("%s: cached file fails its sha256 check; downloading it again", dst)
        dst.unlink()
    url = src.url()
    return download(
        url,
        dst,
        src.sha256_prefix,
        what=f"{arch} ImageNet weights",
        offline="download that file on a machine with internet access and pass it with --pretrained PATH "
        f"(or put it at {dst})",
        mismatch="Retry, or pass a verified local copy with --pretrained PATH",
        cache_env="TORCH_HOME",
    )


# ------------------------------------------------------------------------------------------------------ reading


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_tensors(path: str | os.PathLike, what: str = "weights file", map_location: Any = "cpu") -> Any:
    """`torch.load(weights_only=True)`, with a one-line error naming `path` and why it could not be read.

    torch's own message for a file that is not a checkpoint, or that pickles a class (an `argparse.Namespace` of
    training options, say), is many lines, with terminal escape codes, and advises `weights_only=False`: loading
    arbitrary code, which resnetlab never does.
    """
    try:
        with warnings.catch_warnings():  # torch warns before it refuses a TorchScript archive: one line says it all
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for torn, foreign or pickled-code files
        raise ResnetlabError(f"{path}: not a readable {what} ({_load_failure(exc)})") from exc


def _load_failure(exc: Exception) -> str:
    text = str(exc).strip()
    not_torch = "not a PyTorch file: neither a torch.save zip nor a pickle of tensors"
    if m := re.search(r"GLOBAL (\S+)", text):  # "Unsupported global: GLOBAL x" or "unsupported GLOBAL x whose module"
        return (
            f"it pickles {m.group(1)}, and resnetlab loads tensors only, never pickled code: save the model's "
            "state_dict instead"
        )
    if "TorchScript archive" in text:
        return (
            "a TorchScript export, for torch.jit.load in an application; resnetlab reads the run folder, its .pt "
            "checkpoint or an .onnx export"
        )
    if "PytorchStreamReader failed" in text:
        return "a torn or truncated torch.save file: copy or download it again"
    if isinstance(exc, EOFError):
        return "empty or cut short: copy or download it again"
    # torch's other refusals advise weights_only=False (running the file's code), which resnetlab never does; a text
    # or foreign binary file fails in the unpickler with a bare KeyError, IndexError ("pop from empty list": a CSV)
    # or UnpicklingError.
    if "weights_only" in text or isinstance(exc, (KeyError, IndexError, pickle.UnpicklingError)):
        return not_torch
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:200]


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A file's state dict (unwrapped, prefixes stripped) and what else it says: `{"arch", "default_cfg", "head"}`."""
    path = Path(path)
    if not path.is_file():
        raise ResnetlabError(f"{path}: no such weights file; pass a .pth/.pt/.th/.safetensors file or a checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _strip_prefixes(load_file(path, device="cpu")), {}
        except Exception as exc:  # SafetensorError (its import path varies by version), OSError
            raise ResnetlabError(f"{path}: not a readable safetensors file ({exc})") from exc

    obj = load_tensors(path)
    meta: dict[str, Any] = {}
    if isinstance(obj, dict) and obj.get("format") == "resnetlab-checkpoint":
        meta = {k: obj.get(k) for k in ("arch", "default_cfg", "head", "num_classes")}
        obj = obj["model"]
    if isinstance(obj, dict) and "best_prec1" in obj:
        # akamaster's CIFAR-10 ResNets (pytorch_resnet_cifar10) normalise 32 px images with ImageNet statistics.
        meta["default_cfg"] = CIFAR_AKAMASTER_CFG
    while isinstance(obj, dict) and not _is_state_dict(obj):
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            raise ResnetlabError(
                f"{path}: no state dict inside (top-level keys: {', '.join(map(str, list(obj)[:8]))}); "
                "expected tensors, or a dict with 'state_dict' or 'model'"
            )
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ResnetlabError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return _strip_prefixes(dict(obj)), meta


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


# ----------------------------------------------------------------------------------------------------- matching


def _convert_cifar(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CIFAR ResNet files name the head `linear`; ours (like torchvision's) call it `fc`."""
    if "linear.weight" in state and "linear.weight" not in expected and "fc.weight" in expected:
        state = {("fc." + k[len("linear.") :] if k.startswith("linear.") else k): v for k, v in state.items()}
    return state


def _fill_batch_counts(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    # Files from before PyTorch 0.4.1 (like the CIFAR ones) lack BatchNorm's counter; it only matters for momentum=None.
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            if key[: -len("num_batches_tracked")] + "running_mean" in state:
                state[key] = torch.zeros_like(value, device="cpu")


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = getattr(model, "default_cfg", {}).get("classifier", "fc")
    return (f"{classifier}.", *_AUX_HEADS)


def _adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """An RGB stem conv for `in_chans` inputs, as timm does: sum for grey, tile and rescale otherwise."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def match_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> tuple[dict, LoadResult]:
    """Fit a file's state dict to `model`: convert CIFAR names, skip heads of another size, adapt the stem.

    Returns the dict to load with `strict=True` and what was skipped; raises for anything that does not fit.
    """
    expected = model.state_dict()
    state = _convert_cifar(state, expected)
    _fill_batch_counts(state, expected)
    result = LoadResult(source=source)
    heads = _head_prefixes(model)

    # A head of another width or layout (or aux heads the model was built without) keeps the model's fresh weights.
    for prefix in heads:
        in_file = [k for k in state if k.startswith(prefix)]
        in_model = {k: v for k, v in expected.items() if k.startswith(prefix)}
        headless = prefix == heads[0] and in_file and not in_model  # num_classes=0: features only, as timm drops it
        if not headless and (
            not in_file or not in_model or all(k in in_model and state[k].shape == in_model[k].shape for k in in_file)
        ):
            continue  # same head, or one the model lacks (named as unexpected below, or dropped as unused aux)
        for key in in_file:
            result.skipped.append(key)
            del state[key]
        state.update({k: v for k, v in in_model.items() if k not in state})
    for aux in ("aux1.", "aux2."):
        if not any(k.startswith(aux) for k in expected):
            for key in [k for k in state if k.startswith(aux)]:
                result.skipped.append(key)
                del state[key]
        elif not any(k.startswith(aux) for k in state):
            # torchvision's own GoogLeNet state dict drops its aux heads: ours train them from scratch instead.
            state.update({k: v for k, v in expected.items() if k.startswith(aux)})
            result.fresh.append(aux.rstrip("."))

    stem = getattr(model, "default_cfg", {}).get("first_conv")
    key = f"{stem}.weight"
    if stem and key in state and key in expected:
        v, e = state[key], expected[key]
        if (
            v.ndim == 4
            and v.shape[1] == 3
            and v.shape[:1] + v.shape[2:] == e.shape[:1] + e.shape[2:]
            and e.shape[1] != 3
        ):
            state[key] = _adapt_stem(v, e.shape[1])
            result.adapted.append(key)

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = [
        f"{label}: {', '.join(keys[:6])}{f' (+{len(keys) - 6} more)' if len(keys) > 6 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
        if keys
    ]
    if problems:
        fits = models_that_fit(state, Path(source).name)
        hint = f"; they fit {', '.join(fits)}: pass --model {fits[0]}" if fits else ""
        raise ResnetlabError(f"{source}: weights do not fit {type(model).__name__} ({'; '.join(problems)}){hint}")
    return state, result


def models_that_fit(state: Mapping[str, torch.Tensor], file_name: str = "") -> list[str]:
    """Registered models whose weights have exactly `state`'s names and shapes, the classifier aside (any width).

    A model named in `file_name` comes first: `resnet56-4bfd9763.th` also fits `plain56`, whose parameter-free
    shortcuts leave the same weights.
    Only on the error path: building every model on the meta device (no memory, no initialisation) takes ~2 s.
    """
    from resnetlab.models._registry import create_model, list_models

    def body(names_shapes: Mapping[str, Any], heads: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
        # GoogLeNet's aux heads are optional in a file (torchvision's ImageNet file has none): they decide nothing.
        skip = (*heads, "aux1.", "aux2.")
        return {k: tuple(v.shape) for k, v in names_shapes.items() if not k.startswith(skip)}

    fits = []
    for name in list_models():
        try:
            with torch.device("meta"):
                candidate = create_model(name, num_classes=2)
        except Exception:  # a model that cannot be built this way is simply not suggested
            continue
        heads = _head_prefixes(candidate)
        expected = candidate.state_dict()
        converted = _convert_cifar(dict(state), expected)
        _fill_batch_counts(converted, expected)  # CIFAR files predate BatchNorm's counter
        if body(converted, heads) == body(expected, heads):
            fits.append(name)
    return sorted(fits, key=lambda name: name not in file_name.lower())  # stable: registry order otherwise


# ------------------------------------------------------------------------------------------------------ loading


def _known_names(arch: str) -> set[str]:
    from resnetlab.models._registry import list_models

    return {arch, *list_models(), *IMAGENET_WEIGHTS}


def load_pretrained(model: nn.Module, arch: str, pretrained: str | os.PathLike, num_classes: int) -> LoadResult:
    """Load "imagenet" or a weights file into `model` (built for `num_classes`); see the module docstring."""
    model_attrs: Mapping[str, Any] = {}
    cfg: Mapping[str, Any] | None = None
    if str(pretrained).lower() == "imagenet":
        path = download_imagenet_weights(arch)
        cfg, model_attrs = IMAGENET_WEIGHTS[arch].cfg, IMAGENET_WEIGHTS[arch].model_attrs
        state, meta = read_weights(path)
    else:
        path = Path(pretrained).expanduser()
        if path.is_dir():  # a training run folder: its best.pt (else last.pt)
            from resnetlab.engine.checkpoint import resolve_checkpoint_path

            path = resolve_checkpoint_path(path)
        if not path.is_file():
            raise ResnetlabError(
                f"--pretrained {pretrained}: no such file; use 'imagenet' or a .pth/.safetensors/checkpoint path"
            )
        check_name_hash(path, _known_names(arch))
        state, meta = read_weights(path)
        if meta.get("arch") and meta["arch"] != arch:
            raise ResnetlabError(f"{path}: checkpoint is a {meta['arch']}, not a {arch}; use --model {meta['arch']}")
        if meta.get("head") and meta.get("num_classes") == num_classes:
            from resnetlab.engine.heads import replace_head

            head = meta["head"]
            replace_head(model, num_classes, hidden=head.get("hidden", ()), dropout=head.get("dropout", 0.0))
            # What the model now carries, for a run started from it to record (its checkpoints must rebuild it).
            model.pretrained_head = {"hidden": list(head.get("hidden", ())), "dropout": float(head.get("dropout", 0.0))}
        cfg = meta.get("default_cfg")
        known = IMAGENET_WEIGHTS.get(arch)
        if known is not None and path.name == known.file:  # the ImageNet file, fetched by hand as offline users do
            cfg, model_attrs = cfg or known.cfg, known.model_attrs  # GoogLeNet's transform_input, V2 crops

    state, result = match_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    for name, value in model_attrs.items():
        if hasattr(model, name) and not result.adapted:  # e.g. transform_input only means something for RGB
            setattr(model, name, value)
    if cfg:
        model.default_cfg = _merge_cfg(getattr(model, "default_cfg", {}), cfg)
    if result.skipped:
        kept = f"keeps its fresh {num_classes}-class head" if num_classes else "has no classifier (num_classes=0)"
        log.warning(
            "%s: skipped %d keys (a head of another size, or aux heads the model lacks); the model %s: %s",
            path.name, len(result.skipped), kept, ", ".join(result.skipped),
        )  # fmt: skip
    if result.adapted:
        log.warning("%s: adapted the RGB stem %s to the model's input channels", path.name, ", ".join(result.adapted))
    if result.fresh:
        log.warning("%s: no weights for %s in the file; they start fresh", path.name, " and ".join(result.fresh))
    return result


def _merge_cfg(model_cfg: Mapping[str, Any], weights_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Preprocessing from the weights; layer names and the input's channel count stay the model's."""
    cfg = {**model_cfg, **{k: v for k, v in weights_cfg.items() if k not in ("classifier", "first_conv")}}
    if "input_size" in model_cfg and "input_size" in weights_cfg:
        cfg["input_size"] = (model_cfg["input_size"][0], *weights_cfg["input_size"][1:])
    return cfg
