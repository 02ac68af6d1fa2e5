"""1x1 convolutions as matrix products equal nn.Conv2d's outputs and gradients, and switching a model over changes
nothing but the speed: same outputs, same state_dict, plain Conv2d behaviour off the CPU channels_last path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.engine import conv1x1
from resnetlab.engine.conv1x1 import MatmulConv1x1, conv1x1_as_matmul, enable_matmul_1x1, is_plain_1x1, use_matmul
from resnetlab.models import create_model


def _pair(cin: int, cout: int, stride: int, bias: bool, dtype: torch.dtype = torch.float32) -> tuple[nn.Conv2d, ...]:
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=bias).to(dtype)
    fast = copy.deepcopy(conv)
    assert enable_matmul_1x1(fast) == 1 and type(fast) is MatmulConv1x1
    return conv, fast


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_matmul_form_matches_conv2d(stride, bias):
    torch.manual_seed(0)
    x = torch.randn(3, 12, 9, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)  # odd sizes
    w = torch.randn(20, 12, 1, 1, dtype=torch.float64)
    b = torch.randn(20, dtype=torch.float64) if bias else None
    dy = torch.randn(F.conv2d(x, w, b, stride).shape, dtype=torch.float64)
    outs, grads = [], []
    for fn in (F.conv2d, conv1x1_as_matmul):
        inputs = [t.clone().requires_grad_() for t in (x, w, *([b] if bias else []))]
        y = fn(inputs[0], inputs[1], inputs[2] if bias else None, (stride, stride))
        outs.append(y)
        grads.append(torch.autograd.grad(y, inputs, dy))
    assert outs[1].is_contiguous(memory_format=torch.channels_last)  # the next layer sees the layout it expects
    torch.testing.assert_close(outs[1], outs[0])
    for g_fast, g_conv in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fast, g_conv)


@pytest.mark.parametrize("stride", [1, 2])
def test_bf16_takes_the_matmul_and_stays_close(stride, monkeypatch):
    conv, fast = _pair(64, 128, stride, True)
    calls = []
    monkeypatch.setattr(conv1x1, "conv1x1_as_matmul", lambda *a: calls.append(1) or conv1x1_as_matmul(*a))
    x = torch.randn(4, 64, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    exact = conv(x)  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_conv, y_fast = conv(x), fast(x)
    y_bf16 = fast.to(torch.bfloat16)(x.detach().bfloat16())  # bf16 weights and input, no autocast
    assert len(calls) == 2 and y_fast.dtype == y_conv.dtype == y_bf16.dtype == torch.bfloat16
    assert y_fast.is_contiguous(memory_format=torch.channels_last)
    # Each is bf16 inputs with an fp32 accumulation rounded once: within a bf16 step of the fp32 result.
    assert (y_fast.float() - exact).abs().max() <= 2 * (y_conv.float() - exact).abs().max() + 1e-6
    y_fast.float().sum().backward()
    assert x.grad.dtype == torch.float32 and fast.weight.grad.abs().sum() > 0


def test_other_inputs_take_the_convolution(monkeypatch):
    conv, fast = _pair(8, 16, 2, True)
    monkeypatch.setattr(conv1x1, "conv1x1_as_matmul", lambda *a: pytest.fail("took the matmul"))
    cl = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # NCHW and an unbatched (C, H, W) input, in bf16
        for x in (torch.randn(2, 8, 6, 6), torch.randn(8, 6, 6)):
            torch.testing.assert_close(fast(x), conv(x), rtol=0, atol=0)
    torch.testing.assert_close(fast(cl), conv(cl), rtol=0, atol=0)  # fp32 channels_last: measured no faster


def test_rule_follows_the_measurements(monkeypatch):
    assert use_matmul((1, 1), 56, 56) and use_matmul((1, 1), 112, 112) and use_matmul((2, 2), 28, 28)
    assert use_matmul((2, 2), 14, 14) and not use_matmul((2, 2), 56, 56) and not use_matmul((2, 2), 29, 28)
    conv, fast = _pair(8, 16, 2, False)  # a strided projection on a 56x56 map keeps oneDNN's convolution
    monkeypatch.setattr(conv1x1, "conv1x1_as_matmul", lambda *a: pytest.fail("took the matmul"))
    x = torch.randn(2, 8, 56, 56).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(fast(x), conv(x), rtol=0, atol=0)


def test_only_plain_1x1_convolutions_switch():
    assert is_plain_1x1(nn.Conv2d(4, 8, 1)) and is_plain_1x1(nn.Conv2d(4, 8, 1, stride=2))
    for m in (nn.Conv2d(4, 8, 3), nn.Conv2d(4, 8, 1, groups=2), nn.Conv2d(4, 8, 1, padding=1), nn.Conv2d(4, 8, (1, 3))):
        assert not is_plain_1x1(m)
    assert enable_matmul_1x1(nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 1, groups=4))) == 0


def test_resnet50_unchanged_but_for_speed():
    torch.manual_seed(0)
    plain = create_model("resnet50", num_classes=5).train().to(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    keys = list(plain.state_dict())
    assert enable_matmul_1x1(fast) == 16 * 2 + 4  # conv1 and conv3 of every Bottleneck, and the 4 projections
    assert list(fast.state_dict()) == keys and type(fast.layer2[0].downsample[0]) is MatmulConv1x1
    assert type(fast.layer1[0].conv2) is nn.Conv2d  # the 3x3s stay
    exact = copy.deepcopy(plain)
    x = torch.randn(6, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (6,))
    F.cross_entropy(exact(x), y).backward()  # fp32: the reference
    for model in (plain, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.cross_entropy(model(x), y).backward()
    for (name, e), p, q in zip(exact.named_parameters(), plain.parameters(), fast.parameters()):
        assert q.grad.dtype == p.grad.dtype == torch.float32
        # A fresh ResNet-50's bf16 gradients are far from fp32 ones either way (relative errors up to ~1.3 here, in
        # the early BatchNorm parameters); the matmul form must be no worse than the convolution (measured <= 1.04x).
        err_conv, err_fast = ((g - e.grad).norm() / e.grad.norm() for g in (p.grad, q.grad))
        assert err_fast <= 1.25 * err_conv + 1e-3, (name, err_conv.item(), err_fast.item())
    fast.load_state_dict(plain.state_dict())  # the running statistics moved differently in bf16; keys load unchanged
    plain.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x))  # fp32: the same convolution


def test_every_gradient_has_its_parameters_strides():
    # DDP lays each gradient into a bucket view with its parameter's strides and copies (with a warning) any that
    # differ: the 1x1 weights of a channels_last model did, after the matrix product's backward.
    from resnetlab.engine.bn_act import enable_fused_bn_act

    model = create_model("resnet50", num_classes=3).train().to(memory_format=torch.channels_last)
    enable_fused_bn_act(model)
    enable_matmul_1x1(model)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum().backward()
    assert model.layer1[0].conv1.weight.grad is not None
    for name, p in model.named_parameters():
        assert p.grad.stride() == p.stride(), name


def test_fit_takes_the_matmul_in_bf16_and_resumes_exactly(digits_dir, tmp_path, monkeypatch):
    from resnetlab.engine.fit import fit
    from tests.engine.conftest import full_and_resumed, tiny_config

    # resnet18's three projection shortcuts are its 1x1 convolutions (stride 2).
    overrides = {"model": "resnet18", "img_size": 32, "batch_size": 16, "epochs": 2, "amp": "bf16", "device": "cpu"}
    calls = []
    monkeypatch.setattr(conv1x1, "conv1x1_as_matmul", lambda *a: calls.append(1) or conv1x1_as_matmul(*a))
    a, b = full_and_resumed(digits_dir, tmp_path, 1, **overrides)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert calls  # the runs took the matmul path
    calls.clear()
    fit(tiny_config(digits_dir, tmp_path / "fp32", **{**overrides, "amp": "off", "epochs": 1}), log=lambda _: None)
    assert not calls  # fp32 training keeps oneDNN's convolution


def test_bottleneck_input_gradient_absorbs_the_shortcut(monkeypatch):
    from resnetlab.engine.bn_act import enable_fused_bn_act, load_library
    from resnetlab.models.resnet import Bottleneck

    if load_library(torch.bfloat16) is None:
        pytest.skip("the fused BatchNorm kernels could not be built here")
    torch.manual_seed(0)
    exact = nn.Sequential(Bottleneck(256, 64), Bottleneck(256, 64)).train().to(memory_format=torch.channels_last)
    conv = copy.deepcopy(exact)
    enable_fused_bn_act(conv)
    fast = copy.deepcopy(conv)
    assert enable_matmul_1x1(fast) == 4
    shared = []
    backward = conv1x1._Conv1x1AddGrad.backward

    def spy(ctx, grad_out: torch.Tensor) -> tuple:
        shared.append(ctx.stash.grad is not None)
        return backward(ctx, grad_out)

    monkeypatch.setattr(conv1x1._Conv1x1AddGrad, "backward", spy)
    x = torch.randn(4, 256, 12, 10).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(4, 256, 12, 10).contiguous(memory_format=torch.channels_last)

    def grads(model: nn.Module, bf16: bool) -> list[torch.Tensor]:
        xi = (x.bfloat16() if bf16 else x).requires_grad_()  # the dtype a block input has in bf16 training
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model(xi)
        return [g.float() for g in torch.autograd.grad(y, [xi, *model.parameters()], dy.to(y.dtype))]

    ref = grads(exact, bf16=False)
    a, b = grads(fast, bf16=True), grads(fast, bf16=True)
    assert shared == [True, True, True, True]  # each block's conv1 took the shortcut's gradient, in both runs
    assert all(torch.equal(p, q) for p, q in zip(a, b))  # deterministic (exact resume relies on it)
    for i, (r, g_conv, g_fast) in enumerate(zip(ref, grads(conv, bf16=True), a)):
        err_conv, err_fast = ((g - r).norm() / r.norm() for g in (g_conv, g_fast))
        assert err_fast <= 1.25 * err_conv + 1e-3, (i, err_conv.item(), err_fast.item())


def test_shared_gradient_when_the_block_input_needs_none():
    """Staged unfreezing: a trainable bottleneck fed by a frozen stage. The BatchNorm still hands the shortcut's
    gradient to the stash, and conv1 must leave it unused; the weights' gradients are those of a run whose input
    wants a gradient too."""
    from resnetlab.engine.bn_act import enable_fused_bn_act, load_library
    from resnetlab.models.resnet import Bottleneck

    if load_library(torch.bfloat16) is None:
        pytest.skip("the fused BatchNorm kernels could not be built here")
    torch.manual_seed(0)
    model = nn.Sequential(Bottleneck(256, 64), Bottleneck(256, 64)).train().to(memory_format=torch.channels_last)
    enable_fused_bn_act(model)
    assert enable_matmul_1x1(model) == 4
    x = torch.randn(2, 256, 8, 6).contiguous(memory_format=torch.channels_last).bfloat16()
    dy = torch.randn(2, 256, 8, 6).contiguous(memory_format=torch.channels_last).bfloat16()

    def weight_grads(wants_input_grad: bool) -> list[torch.Tensor]:
        xi = x.clone().requires_grad_(wants_input_grad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(xi)
        return list(torch.autograd.grad(y, list(model.parameters()), dy))

    frozen, free = weight_grads(False), weight_grads(True)
    assert all(torch.equal(a, b) for a, b in zip(frozen, free))
    assert all(g.abs().sum() > 0 for g in frozen)
