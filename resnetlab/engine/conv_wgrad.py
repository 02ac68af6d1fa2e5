"""A faster weight gradient for 3x3 convolutions on small feature maps, for bf16 training on the CPU.

oneDNN's weight-gradient kernel is slow when the feature map is tiny and the channels many: ResNet-18's layer4 at
96 px input (512 channels at 3x3) took 16 ms per conv for the weight gradient against 4.8 ms for the forward pass,
a third of the whole training step. The same gradient is one matrix product,
`dW = dY^T @ im2col(X)`, of (O, N*H*W) by (N*H*W, 9*C), which AMX runs near its peak. Measured on this project's
2-core AVX-512/AMX machine, bf16, channels_last (`benchmarks/bench_conv_wgrad.py`):

    batch 64:   C=512  H=W=3: 16.8 -> 2.0 ms (8.4x)   H=W=7: 23.5 -> 12.9 ms (1.8x)   H=W=8: 1.0x
                C=256  H=W=3: 3.1 -> 0.7 ms (4.5x)    H=W=7: 5.0 -> 3.7 ms (1.4x)     H=W=10: 0.95x
                C=128  H=W=4: 1.0 -> 0.6 ms (1.8x)    H=W=6: 1.0x

so the GEMM is used only where it won (`use_gemm`); everything else, and the input gradient, stays with oneDNN. In
fp32 the GEMM won only at C=512, 3x3 (1.78x) and lost elsewhere (0.65-0.78x), so it is for bf16 autocast only.
`enable_gemm_weight_grad(model)` switches a model's eligible convolutions over; their state_dict is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def use_gemm(channels: int, height: int, width: int) -> bool:
    """Where the GEMM weight gradient measured faster than oneDNN's (see the module docstring)."""
    if channels >= 256:
        return height * width <= 49
    return channels >= 128 and height * width <= 16


def weight_grad_3x3(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """dL/dW of a 3x3, stride 1, padding 1 convolution: x (N, C, H, W), grad_out (N, O, H, W) -> (O, C, 3, 3)."""
    n, c, h, w = x.shape
    o = grad_out.shape[1]
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (N, H+2, W+2, C): a view when x is channels_last
    cols = torch.stack([padded[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)], dim=3)  # (N,H,W,9,C)
    dy = grad_out.permute(0, 2, 3, 1).reshape(n * h * w, o)  # (N*H*W, O)
    grad = dy.t() @ cols.reshape(n * h * w, 9 * c)  # (O, 9*C)
    return grad.view(o, 3, 3, c).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


class _Conv3x3(torch.autograd.Function):
    """conv2d(x, w, stride 1, padding 1) whose weight gradient is `weight_grad_3x3`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, None, 1, 1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_3x3(x, grad_out)
        return grad_x, grad_w


class GemmWeightGradConv2d(nn.Conv2d):
    """An `nn.Conv2d` (3x3, stride 1, padding 1, no bias, one group) that takes the GEMM weight gradient when
    training under CPU bf16 autocast on a small feature map, and is a plain Conv2d otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            torch.is_grad_enabled()
            and x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and use_gemm(self.in_channels, x.shape[-2], x.shape[-1])
        ):
            with torch.autocast("cpu", enabled=False):  # cast here, as autocast would, so the Function sees bf16
                return _Conv3x3.apply(x.to(torch.bfloat16), self.weight.to(torch.bfloat16))
        return super().forward(x)


def eligible(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.kernel_size == (3, 3)
        and module.stride == (1, 1)
        and module.padding == (1, 1)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.bias is None
        and module.padding_mode == "zeros"
        and module.in_channels == module.out_channels  # the shapes measured (every such ResNet conv is square)
        and module.in_channels >= 128
    )


def enable_gemm_weight_grad(model: nn.Module) -> int:
    """Switch `model`'s eligible convolutions to `GemmWeightGradConv2d` in place; returns how many."""
    count = 0
    for module in model.modules():
        if eligible(module):
            module.__class__ = GemmWeightGradConv2d  # same parameters and state_dict keys, new forward
            count += 1
    return count
