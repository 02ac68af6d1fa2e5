"""The GEMM weight gradient for small 3x3 convolutions equals oneDNN's, and switching a model over changes nothing
but the speed: same outputs, same state_dict, plain Conv2d behaviour outside CPU bf16 training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.engine.conv_wgrad import GemmWeightGradConv2d, enable_gemm_weight_grad, use_gemm, weight_grad_3x3
from resnetlab.models import create_model


@pytest.mark.parametrize(("channels", "out_channels", "size"), [(8, 16, 5), (128, 128, 3), (32, 32, 7)])
def test_weight_grad_matches_convolution_backward(channels, out_channels, size):
    x = torch.randn(4, channels, size, size + 1, dtype=torch.float64)  # non-square map: rows and columns not mixed up
    w = torch.randn(out_channels, channels, 3, 3, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(4, out_channels, size, size + 1, dtype=torch.float64)
    F.conv2d(x, w, None, 1, 1).backward(dy)
    torch.testing.assert_close(weight_grad_3x3(x, dy), w.grad)
    cl = x.contiguous(memory_format=torch.channels_last)  # the layout training uses
    torch.testing.assert_close(weight_grad_3x3(cl, dy.contiguous(memory_format=torch.channels_last)), w.grad)


def test_rule_follows_the_measurements():
    assert use_gemm(512, 3, 3) and use_gemm(512, 7, 7) and use_gemm(256, 6, 6) and use_gemm(128, 4, 4)
    assert not use_gemm(512, 8, 8) and not use_gemm(256, 10, 10) and not use_gemm(128, 6, 6) and not use_gemm(64, 3, 3)


def test_resnet18_training_step_matches_plain_convs():
    torch.manual_seed(0)
    plain = create_model("resnet18", num_classes=5).train().to(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    keys = list(plain.state_dict())
    # The stride-1 3x3 convs of layer2-4 (3 per stage) switch; at 96 px input layer3 (256 ch, 6x6) and layer4
    # (512 ch, 3x3) take the GEMM path, layer2 (128 ch, 12x12) stays with oneDNN at run time.
    assert enable_gemm_weight_grad(fast) == 9
    assert list(fast.state_dict()) == keys and isinstance(fast.layer4[1].conv1, nn.Conv2d)
    assert type(fast.layer4[1].conv1) is GemmWeightGradConv2d and type(fast.layer4[0].conv1) is nn.Conv2d  # stride 2
    x = torch.randn(6, 3, 96, 96).to(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (6,))
    for model in (plain, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert q.grad.dtype == p.grad.dtype == torch.float32
        # Both in bf16: only the summation order differs.
        torch.testing.assert_close(q.grad, p.grad, rtol=0.05, atol=2e-2 * p.grad.abs().max().item(), msg=name)
    conv = fast.layer4[1].conv1
    assert conv.weight.grad.abs().sum() > 0


def test_plain_path_outside_bf16_training():
    conv = nn.Conv2d(128, 128, 3, padding=1, bias=False)
    ref = copy.deepcopy(conv)
    assert enable_gemm_weight_grad(conv) == 1
    x = torch.randn(2, 128, 3, 3)
    torch.testing.assert_close(conv(x), ref(x))  # fp32, no autocast: the ordinary Conv2d forward
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(conv(x), ref(x))
    ema = copy.deepcopy(conv)  # EMA copies keep the class (and so the same behaviour)
    assert type(ema) is GemmWeightGradConv2d
