"""1x1 convolutions as matrix products, for channels_last training on the CPU.

A channels_last (N, C, H, W) tensor is a row-major (N*H*W, C) matrix, so a 1x1 convolution is one matrix product,
`x @ W^T`, and its two gradients are two more (`dY @ W` and `dY^T @ x`). `F.linear` on the (N, H, W, C) view runs them
through PyTorch's matmul (oneDNN's AMX/AVX-512 GEMM), which on this project's 2-core machine beat oneDNN's own
1x1 convolution in every stride-1 ResNet-50 shape at batch 64 in bf16: forward 1.0-1.3x, input gradient 1.0-1.5x,
weight gradient 1.0-1.6x (strided ones: see `use_matmul`). Per shape and whole training steps:
`benchmarks/bench_conv1x1.py`, with the figures in benchmarks/RESULTS.md.

`enable_matmul_1x1(model)` switches a model's plain 1x1 convolutions (one group, no padding or dilation; any stride)
over in place; parameters and state_dict keys are unchanged. The matrix path runs for CPU channels_last inputs in
bf16 only; anything else (fp32, where whole steps measured 0.98-0.99x, CUDA, NCHW, a 3-d input) takes `nn.Conv2d`'s
own. Under autocast `F.linear` is cast exactly as the convolution would be, so bf16 training stays bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def use_matmul(stride: tuple[int, int], height: int, width: int) -> bool:
    """Where the matrix form measured faster (bf16, batch 64, forward + backward, `bench_conv1x1.py --layers`):
    every stride-1 shape, and strided ones on maps up to 28x28. A strided 1x1 convolution's input gradient is mostly
    zeros; on a 56x56 map (ResNet-50's layer2 projection, 256 -> 512) filling and scattering it cost more than the
    GEMM saved (0.88x), while on 28x28 and 14x14 maps the matrix form won 1.27x and 2.32x."""
    return stride == (1, 1) or height * width <= 28 * 28


def conv1x1_as_matmul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int]
) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride)` for a (O, C, 1, 1) weight, as `F.linear` over x's (N, H, W, C) view."""
    sh, sw = stride
    if sh > 1 or sw > 1:
        x = x[:, :, ::sh, ::sw]  # what a strided 1x1 kernel sees (padding is 0)
    y = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)  # (N, H, W, O)
    return y.permute(0, 3, 1, 2)  # (N, O, H, W); channels_last when x was


class MatmulConv1x1(nn.Conv2d):
    """An `nn.Conv2d` with a 1x1 kernel that runs as a matrix product for CPU channels_last inputs in bf16 (autocast
    or bf16 tensors), where it measured faster; a plain Conv2d otherwise (in fp32 it measured no faster)."""

    def _matmul(self, x: torch.Tensor) -> bool:
        bf16 = x.dtype == torch.bfloat16 or (
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        )
        return (
            bf16
            and x.device.type == "cpu"
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and use_matmul(self.stride, x.shape[-2], x.shape[-1])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._matmul(x):
            return conv1x1_as_matmul(x, self.weight, self.bias, self.stride)
        return super().forward(x)

    def forward_sharing(self, x: torch.Tensor, stash: GradStash) -> torch.Tensor:
        """`forward`, arming `stash` when the input gradient can absorb the shortcut's (see `GradStash`)."""
        if self.bias is not None or self.stride != (1, 1) or x.dtype != torch.bfloat16 or not self._matmul(x):
            return self.forward(x)
        stash.armed = True
        with torch.autocast("cpu", enabled=False):  # cast here, as autocast would, so the Function sees bf16
            return _Conv1x1AddGrad.apply(x, self.weight.to(torch.bfloat16), stash)


def is_plain_1x1(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and module.padding == (0, 0)
        and module.dilation == (1, 1)
    )


def enable_matmul_1x1(model: nn.Module) -> int:
    """Switch every plain 1x1 `nn.Conv2d` in `model` to `MatmulConv1x1` in place; returns how many.

    Their (O, C, 1, 1) weights get NCHW strides, which the matrix products' weight gradients have: in either layout
    the bytes are in the same order, but DDP compares strides exactly, and copied (and warned about) every such
    gradient of a channels_last model ("Grad strides do not match bucket view strides") on each step.
    """
    switched = 0
    for module in model.modules():
        if is_plain_1x1(module):
            module.__class__ = MatmulConv1x1
            weight = module.weight
            nchw = torch.empty(weight.shape, device="meta").stride()
            if weight.is_contiguous() and weight.stride() != nchw:  # channels_last: only the size-1 dims differ
                weight.data = weight.data.as_strided(weight.shape, nchw)
            switched += 1
    return switched


# ---------------------------------------------------------------------------------------------- shared input gradient


class GradStash:
    """Carries a residual's gradient from the block's last fused BatchNorm to its first 1x1 convolution.

    A bottleneck's input x feeds both the identity shortcut and conv1, so its gradient is the sum of two tensors,
    which autograd adds in a separate pass over the activation (ResNet-50's layer1: three 103 MB bf16 tensors read or
    written). When conv1 takes `_Conv1x1AddGrad` (`armed`), the fused BatchNorm of the block's end puts the shortcut's
    gradient here instead of returning it, and conv1's backward adds its own product into it with one `addmm_`: the
    GEMM reads the sum's other half as it writes. The BatchNorm's backward always runs first: conv1's backward needs
    the gradient that flows back from it through the block.
    """

    __slots__ = ("armed", "grad")

    def __init__(self) -> None:
        self.armed = False
        self.grad: torch.Tensor | None = None


class _Conv1x1AddGrad(torch.autograd.Function):
    """`conv1x1_as_matmul` (stride 1, no bias) whose input gradient is added into `stash.grad` when it holds one."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stash: GradStash) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stash = stash
        return conv1x1_as_matmul(x, weight, None, (1, 1))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        o = weight.shape[0]
        dy = grad_out.permute(0, 2, 3, 1).reshape(n * h * w, o)  # (M, O); a view for a channels_last gradient
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            shortcut, ctx.stash.grad = ctx.stash.grad, None
            if shortcut is None:  # the shortcut's gradient went through autograd (its BatchNorm was not fused)
                grad_x = (dy @ weight.view(o, c)).view(n, h, w, c).permute(0, 3, 1, 2)
            else:
                shortcut.permute(0, 2, 3, 1).view(n * h * w, c).addmm_(dy, weight.view(o, c))
                grad_x = shortcut
        if ctx.needs_input_grad[1]:
            grad_w = (dy.t() @ x.permute(0, 2, 3, 1).reshape(n * h * w, c)).view(o, c, 1, 1)
        return grad_x, grad_w, None
