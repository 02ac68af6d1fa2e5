"""Keras-style model summary: one forward pass with hooks gives every layer's output shape, parameters and MACs.

MACs (multiply-accumulates) per image count Conv and Linear layers only, as torchvision's `_ops` and fvcore do:
BatchNorm, activations, pooling and additions are left out. ResNet-50 at 224 px gives 4.09 G, ResNet-18 1.82 G.
A model built on the meta device (`with torch.device("meta"): ...`) is summarised without allocating its weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_MAC_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class LayerRow:
    """One module as the forward pass saw it (first call); `params` and `macs` include its children."""

    name: str
    type: str
    depth: int
    output_shape: list[tuple[int, ...]]
    params: int
    macs: int


@dataclass
class Summary:
    rows: list[LayerRow]
    input_size: tuple[int, ...]  # (C, H, W), batch left out
    total_params: int
    trainable_params: int
    macs: int  # per image
    model_name: str = ""
    depth: int = 2  # rows deeper than this are hidden by str()
    param_bytes: int = field(default=0)
    not_run: list[tuple[str, int]] = field(default_factory=list)  # (name, params) of children the forward skipped

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def table(self, depth: int | None = None) -> str:
        """The layer table down to `depth` (1: the model's children; 2: also their children, ...) and the totals."""
        depth = self.depth if depth is None else depth
        shown = [r for r in self.rows if r.depth <= depth]
        header = ("Layer (type)", "Output shape", "Param #", "MACs")
        body = [
            (
                f"{'  ' * (r.depth - 1)}{r.name} ({r.type})",
                _format_shapes(r.output_shape),
                f"{r.params:,}",
                human(r.macs),
            )
            for r in shown
        ]
        widths = [max(len(row[i]) for row in (header, *body)) for i in range(4)]
        rule = "-" * (sum(widths) + 6)

        def line(cells: Sequence[str]) -> str:
            return f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]:>{widths[2]}}  {cells[3]:>{widths[3]}}"

        title = f"Model: {self.model_name}" if self.model_name else "Model summary"
        lines = [title, "=" * len(rule), line(header), "=" * len(rule), *map(line, body), "=" * len(rule)]
        if len(shown) < len(self.rows):
            lines.append(f"({len(shown)} of {len(self.rows)} layers shown, depth <= {depth}; use --depth to see more)")
        c, *hw = self.input_size
        if self.not_run:  # GoogLeNet's aux heads: in Total params, in no row
            skipped = ", ".join(f"{name} ({params:,})" for name, params in self.not_run)
            lines.append(f"Not run by an eval-mode forward (training only), counted below: {skipped}")
        lines += [
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            f"MACs per image: {human(self.macs)} ({self.macs:,})",
            f"Input size: {c} x {' x '.join(map(str, hw))}",
            f"Params size: {self.param_bytes / 2**20:.2f} MiB",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def human(n: float) -> str:
    """1_820_000_000 -> "1.82 G"; small numbers as they are."""
    if n < 1000:
        return f"{n:g}"
    exp = min(int(math.log10(n) // 3), 4)
    return f"{n / 1000**exp:.2f} {' KMGT'[exp]}"


def _format_shapes(shapes: list[tuple[int, ...]]) -> str:
    return ", ".join("[" + ", ".join(map(str, s)) + "]" for s in shapes) or "-"


def _shapes(out: Any) -> list[tuple[int, ...]]:
    """Shapes of a module's output: a tensor, or the tensors in a tuple/list (GoogLeNet's named tuple)."""
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, (tuple, list)):
        return [s for o in out for s in _shapes(o)]
    return []


def _layer_macs(module: nn.Module, out: Any) -> int:
    """MACs of one call of a Conv or Linear layer; 0 for everything else."""
    if not isinstance(out, torch.Tensor):
        return 0
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        # Each output element is a dot product over (in_channels / groups) x kernel elements.
        return out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def _example_input(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    p = next(model.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    return torch.zeros(1, *input_size, device=device, dtype=dtype)


def _run_once(model: nn.Module, input_size: Sequence[int], hooks: list) -> None:
    """One eval-mode forward of a single image; restores the training flag and removes `hooks` afterwards."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(_example_input(model, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> int:
    """MACs per image (Conv and Linear layers) for one forward at `input_size` (C, H, W)."""
    total = 0

    def hook(module: nn.Module, _inp: Any, out: Any) -> None:
        nonlocal total
        total += _layer_macs(module, out)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _MAC_LAYERS)]
    _run_once(model, input_size, hooks)
    return total


def summary(
    model: nn.Module, input_size: Sequence[int] = (3, 224, 224), depth: int = 2, model_name: str = ""
) -> Summary:
    """Summarise `model` for one image of `input_size` (C, H, W); `depth` sets how much `str()` shows."""
    names = {m: n for n, m in model.named_modules() if n}
    order: list[nn.Module] = []  # modules in the order their forward starts: parents before children
    shapes: dict[nn.Module, list[tuple[int, ...]]] = {}
    leaf_macs: dict[str, int] = {}

    def pre_hook(module: nn.Module, _inp: Any) -> None:
        if module not in shapes:
            order.append(module)
            shapes[module] = []

    def hook(module: nn.Module, _inp: Any, out: Any) -> None:
        if not shapes[module]:
            shapes[module] = _shapes(out)
        macs = _layer_macs(module, out)
        if macs:  # a layer called twice (a shared ReLU, a reused conv) counts twice
            leaf_macs[names[module]] = leaf_macs.get(names[module], 0) + macs

    hooks = []
    for module in names:
        hooks += [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(hook)]
    _run_once(model, input_size, hooks)

    rows = []
    for module in order:
        name = names[module]
        macs = sum(v for k, v in leaf_macs.items() if k == name or k.startswith(name + "."))
        params = sum(p.numel() for p in module.parameters())
        rows.append(LayerRow(name, type(module).__name__, name.count(".") + 1, shapes[module], params, macs))
    params = list(model.parameters())
    not_run = [
        (name, n) for name, child in model.named_children() if child not in shapes and (n := count_params(child))
    ]
    return Summary(
        rows=rows,
        input_size=tuple(input_size),
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        macs=sum(leaf_macs.values()),
        model_name=model_name or type(model).__name__,
        depth=depth,
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        not_run=not_run,
    )


def build_for_summary(name: str, **kwargs: Any) -> nn.Module:
    """`create_model(name)` on the meta device: shapes and counts without allocating or initialising weights."""
    from resnetlab.models import create_model

    with torch.device("meta"):
        return create_model(name, **kwargs)
