"""BatchNorm + residual add + ReLU (or ReLU6) in one kernel for training on the CPU, in bf16 or fp32.

In a ResNet training step under CPU bf16 autocast, half the time is not convolution: BatchNorm's forward and
backward, the ReLUs and their masks, and the residual adds each stream whole activation tensors through memory.
`bn_act.c` does BatchNorm's statistics and normalisation with the add and ReLU in two passes forward, and the masked
BatchNorm gradient in two passes backward (the ReLU mask is recomputed from the input instead of being read).

The C file is compiled once per machine and element type with the system's gcc (about half a second each) into
resnetlab's cache folder (`$RESNETLAB_CACHE/kernels`, default `~/.cache/resnetlab/kernels`) and loaded with ctypes;
where no compiler is found or the build fails, training uses PyTorch's own ops, unchanged.
`enable_fused_bn_act(model)` switches a model's units over in place: parameters, buffers and state_dict keys stay
the same, and the fused path runs only in training mode, on the CPU, for bf16 or fp32 channels_last tensors. Set
RESNETLAB_FUSED_BN=0 to turn it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.engine.conv1x1 import GradStash, MatmulConv1x1
from resnetlab.engine.precision import cpu_flags
from resnetlab.models.cifar_resnet import CifarBasicBlock
from resnetlab.models.googlenet import BasicConv2d
from resnetlab.models.mobilenet import ConvBNAct, InvertedResidual
from resnetlab.models.resnet import BasicBlock, Bottleneck, ResNet
from resnetlab.paths import cache_root

SOURCE = Path(__file__).with_name("bn_act.c")
_p, _i64, _f32, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
# gcc vectorises with 256-bit registers on AVX-512 CPUs unless told; 512 made the kernels 10-20% faster here.
VECTOR_FLAGS: dict[str, list[str]] = {"x86_64": ["-mprefer-vector-width=512"]}


def cache_dir() -> Path:
    return cache_root() / "kernels"


# The element types the kernels are built for, and the extra compiler flags of each build.
BUILDS: dict[torch.dtype, list[str]] = {torch.bfloat16: [], torch.float32: ["-DBN_ACT_FP32"]}


@functools.lru_cache(maxsize=len(BUILDS))
def load_library(dtype: torch.dtype = torch.bfloat16) -> ctypes.CDLL | None:
    """The kernels for `dtype` tensors, built on first use; None where they cannot be built or are turned off."""
    if os.environ.get("RESNETLAB_FUSED_BN", "1") == "0" or platform.system() != "Linux":
        return None
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        return None
    flags = ["-O3", "-march=native", *VECTOR_FLAGS.get(platform.machine(), []), "-fopenmp", "-shared", "-fPIC"]
    flags += BUILDS[dtype]
    # -march=native code is only valid on this kind of CPU: its flags are part of the key, with the build's own.
    parts = [SOURCE.read_bytes(), cc.encode(), " ".join(flags).encode(), (cpu_flags() or platform.processor()).encode()]
    path = cache_dir() / f"bn_act-{hashlib.sha256(b'|'.join(parts)).hexdigest()[:16]}.so"
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                out = Path(tmp) / path.name
                cmd = [cc, *flags, str(SOURCE), "-o", str(out), "-lm"]
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                os.replace(out, path)  # atomic: a concurrent build or a kill leaves no half-written library
        except (OSError, subprocess.SubprocessError):
            return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    lib.bn_act_forward.argtypes = [_p, _p, _p, _i64, _i64, _p, _p, _p, _p, _f32, _f32, _int, _f32, _p, _p]
    lib.bn_act_backward.argtypes = [_p, _p, _p, _p, _p, _i64, _i64, _p, _p, _p, _p, _int, _f32, _p, _p]
    lib.bn_act_forward.restype = lib.bn_act_backward.restype = None
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


# Activation name -> (on, upper clamp): the kernels clamp to [0, upper] and pass gradients where 0 < v < upper.
ACTS: dict[str | None, tuple[int, float]] = {None: (0, math.inf), "relu": (1, math.inf), "relu6": (1, 6.0)}
ACT_FN = {"relu": F.relu, "relu6": F.relu6}
ACT_OF = {nn.ReLU: "relu", nn.ReLU6: "relu6"}


class _BatchNormAct(torch.autograd.Function):
    """act(batch_norm(x) + residual) in training mode; x and residual bf16 or fp32 channels_last, parameters fp32."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, residual, act, stash=None):
        lib = load_library(x.dtype)
        n, c, h, w = x.shape
        y = torch.empty_like(x, memory_format=torch.channels_last)
        mean, invstd = torch.empty(c), torch.empty(c)
        update = running_mean is not None and momentum is not None
        lib.bn_act_forward(
            _ptr(x), _ptr(residual), _ptr(y), n * h * w, c, _ptr(weight), _ptr(bias), _ptr(running_mean),
            _ptr(running_var), momentum if update else -1.0, eps, *ACTS[act], _ptr(mean), _ptr(invstd),
        )  # fmt: skip
        # With a residual the activation's mask depends on it, so backward reads the output; else it recomputes it.
        # The kernel then writes the masked gradient, which is also the residual's; with no activation that is dy.
        masked_residual = residual is not None and act is not None
        ctx.save_for_backward(x, weight, bias, mean, invstd, y if masked_residual else None)
        ctx.masked_residual, ctx.has_residual, ctx.act = masked_residual, residual is not None, act
        ctx.stash = stash if masked_residual else None  # an armed GradStash takes the residual's gradient (conv1x1.py)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, invstd, y = ctx.saved_tensors
        lib = load_library(x.dtype)
        n, c, h, w = x.shape
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        g = torch.empty_like(x, memory_format=torch.channels_last) if ctx.masked_residual else None
        dweight, dbias = torch.empty(c), torch.empty(c)
        lib.bn_act_backward(
            _ptr(grad_out), _ptr(x), _ptr(y), _ptr(g), _ptr(dx), n * h * w, c, _ptr(weight), _ptr(bias),
            _ptr(mean), _ptr(invstd), *ACTS[ctx.act], _ptr(dweight), _ptr(dbias),
        )  # fmt: skip
        if ctx.has_residual and not ctx.masked_residual:
            g = grad_out
        if ctx.stash is not None:  # the block's first 1x1 convolution adds its input gradient into g
            ctx.stash.grad, g = g, None
        return dx, dweight, dbias, None, None, None, None, g, None, None


def _fusable(bn: nn.BatchNorm2d, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    return (
        bn.training
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype in BUILDS
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.shape[0] * x.shape[2] * x.shape[3] > 1  # one value per channel: PyTorch's own error, not a silent 0 var
        and (residual is None or (residual.dtype == x.dtype and residual.shape == x.shape))
        and bn.affine
        and bn.weight.dtype == torch.float32
        and load_library(x.dtype) is not None
    )


def bn_act(
    bn: nn.BatchNorm2d,
    x: torch.Tensor,
    residual: torch.Tensor | None = None,
    act: str | None = "relu",
    stash: GradStash | None = None,
) -> torch.Tensor:
    """act(bn(x) + residual), fused when `_fusable`, else PyTorch's ops exactly as the eager blocks run them.
    With an armed `stash` and the fused path, the residual's gradient goes to the stash instead of to autograd."""
    if not _fusable(bn, x, residual):
        out = bn(x)
        if residual is not None:
            out += residual
        return ACT_FN[act](out, inplace=True) if act else out
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    # BatchNorm2d.forward's bookkeeping: count the batch, and momentum None means a cumulative average.
    momentum = bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    running = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
    with torch.autocast("cpu", enabled=False):
        armed = stash if stash is not None and stash.armed else None
        return _BatchNormAct.apply(x, bn.weight, bn.bias, *running, momentum, bn.eps, residual, act, armed)


def _shortcut(block: BasicBlock | Bottleneck, x: torch.Tensor) -> torch.Tensor:
    """The block's shortcut: x, or the projection (1x1 conv, then BatchNorm through `bn_act` without ReLU)."""
    down = block.downsample
    if down is None:
        return x
    if isinstance(down, nn.Sequential) and len(down) == 2 and type(down[1]) is nn.BatchNorm2d:
        return bn_act(down[1], down[0](x), act=None)
    return down(x)


class FusedBasicBlock(BasicBlock):
    """BasicBlock whose BatchNorms run with their ReLU (and the second with the residual add) through `bn_act`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = _shortcut(self, x)
        out = bn_act(self.bn1, self.conv1(x))
        return bn_act(self.bn2, self.conv2(out), identity)


class FusedBottleneck(Bottleneck):
    """Bottleneck likewise: bn1 and bn2 with their ReLU, bn3 with the residual add and the last ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is None and isinstance(self.conv1, MatmulConv1x1):
            # Identity shortcut: conv1's input gradient absorbs the shortcut's in one addmm_ (see GradStash).
            stash = GradStash()
            out = bn_act(self.bn1, self.conv1.forward_sharing(x, stash))
            out = bn_act(self.bn2, self.conv2(out))
            return bn_act(self.bn3, self.conv3(out), x, stash=stash)
        identity = _shortcut(self, x)
        out = bn_act(self.bn1, self.conv1(x))
        out = bn_act(self.bn2, self.conv2(out))
        return bn_act(self.bn3, self.conv3(out), identity)


class FusedResNet(ResNet):
    """ResNet whose stem BatchNorm runs with its ReLU."""

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(bn_act(self.bn1, self.conv1(x)))


class FusedCifarBasicBlock(CifarBasicBlock):
    """The CIFAR ResNets' block (and their plain twins', without the residual) likewise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = bn_act(self.bn1, self.conv1(x))
        return bn_act(self.bn2, self.conv2(out), self.shortcut(x) if self.residual else None)


class FusedConvBNAct(ConvBNAct):
    """MobileNet's conv + BatchNorm + ReLU/ReLU6 with the last two through `bn_act`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn, act = self
        return bn_act(bn, conv(x), act=ACT_OF[type(act)])


class FusedInvertedResidual(InvertedResidual):
    """MobileNetV2's block: the projection's BatchNorm takes the shortcut add (no activation, a linear bottleneck)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *body, bn = self.conv
        out = x
        for layer in body:
            out = layer(out)
        return bn_act(bn, out, x if self.use_res_connect else None, act=None)


class FusedBasicConv2d(BasicConv2d):
    """GoogLeNet's conv + BatchNorm + ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bn_act(self.bn, self.conv(x))


FUSED = {
    BasicBlock: FusedBasicBlock,
    Bottleneck: FusedBottleneck,
    ResNet: FusedResNet,
    CifarBasicBlock: FusedCifarBasicBlock,
    InvertedResidual: FusedInvertedResidual,
    BasicConv2d: FusedBasicConv2d,
}


def _fused_class(module: nn.Module) -> type[nn.Module] | None:
    if type(module) is ConvBNAct:  # only with an activation the kernels know
        return FusedConvBNAct if type(module[2]) in ACT_OF else None
    return FUSED.get(type(module))


def enable_fused_bn_act(model: nn.Module) -> int:
    """Switch a model's BatchNorm(+add)(+ReLU) units to the fused forward in place: ResNet's stem, blocks and
    shortcuts, the CIFAR ResNets' blocks, MobileNet's conv units and V2 blocks, GoogLeNet's convs. Returns how many
    modules changed (0 when the kernels cannot be built, or for other architectures)."""
    if all(load_library(dtype) is None for dtype in BUILDS):
        return 0
    count = 0
    for module in model.modules():
        fused = _fused_class(module)
        if fused is not None:
            module.__class__ = fused  # same parameters, buffers and state_dict keys; only forward differs
            count += 1
    return count
