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
    GEMM saved (0.82x), while on 28x28 and 14x14 maps the matrix form won 1.23x and 2.58x."""
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bf16 = x.dtype == torch.bfloat16 or (
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        )
        if (
            bf16
            and x.device.type == "cpu"
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and use_matmul(self.stride, x.shape[-2], x.shape[-1])
        ):
            return conv1x1_as_matmul(x, self.weight, self.bias, self.stride)
        return super().forward(x)


def is_plain_1x1(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and module.padding == (0, 0)
        and module.dilation == (1, 1)
    )


def enable_matmul_1x1(model: nn.Module) -> int:
    """Switch every plain 1x1 `nn.Conv2d` in `model` to `MatmulConv1x1` in place; returns how many."""
    switched = 0
    for module in model.modules():
        if is_plain_1x1(module):
            module.__class__ = MatmulConv1x1
            switched += 1
    return switched
