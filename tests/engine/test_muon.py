"""Muon (conv filters) + AdamW (the rest): against PyTorch's own optimizers, orthogonality, state round trip, config."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from resnetlab.config import TrainConfig
from resnetlab.engine.muon import Muon, is_muon_param, orthogonalize
from resnetlab.engine.optim import build_optimizer, param_groups
from resnetlab.models import create_model


def _set_grads(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_matches_torch_muon_on_filters_and_adamw_on_the_rest():
    torch.manual_seed(0)
    conv, head, bn = nn.Conv2d(8, 16, 3), nn.Linear(16, 4), nn.BatchNorm2d(16)
    ours = [conv.weight, head.weight, conv.bias, head.bias, bn.weight]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    ref_filter = ref[0].detach().reshape(16, -1).clone().requires_grad_()  # PyTorch's Muon takes 2-D matrices only
    groups = [{"params": ours[:2], "weight_decay": 0.1}, {"params": ours[2:], "weight_decay": 0.0}]
    opt = Muon(groups, lr=1e-2, ns_dtype=torch.bfloat16)  # PyTorch's Muon iterates in bf16
    muon = torch.optim.Muon([ref_filter], lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(
        [{"params": ref[1:2], "weight_decay": 0.1}, {"params": ref[2:], "weight_decay": 0.0}], lr=1e-2
    )
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ours]
        _set_grads(ours, grads)
        _set_grads(ref, grads)
        ref_filter.grad = grads[0].reshape(16, -1).clone()
        for o in (opt, muon, adamw):
            o.step()
    torch.testing.assert_close(conv.weight.detach().reshape(16, -1), ref_filter.detach(), rtol=0, atol=0)
    for p, r in zip(ours[1:], ref[1:]):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=0, atol=0)
    assert [g["muon"] for g in opt.param_groups] == [True, False, False]


def _spectrum(k: int, m: int, n: int, smallest: float) -> torch.Tensor:
    """k random (m, n) float64 matrices with singular values log-spaced from 1 down to `smallest`."""
    s = min(m, n)
    u = torch.linalg.qr(torch.randn(k, m, s, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(k, n, s, dtype=torch.float64))[0]
    return (u * torch.logspace(0, torch.log10(torch.tensor(smallest)).item(), s, dtype=torch.float64)) @ v.mT


def _distance_from_exact(g: torch.Tensor, method: str, dtype: torch.dtype) -> float:
    """How far `orthogonalize(g, dtype, method)` lands from the float64 standard iteration, relative to its norm."""
    exact = orthogonalize(g, dtype=torch.float64, method="standard")
    out = orthogonalize(g, dtype=dtype, method=method)
    assert out.dtype == dtype
    return ((out.double() - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("method", ["gram", "eigh"])
@pytest.mark.parametrize("shape", [(3, 48, 432), (2, 432, 48), (1, 40, 100)])
def test_gram_and_eigh_forms_are_the_same_polynomial(shape, method):
    # In float64 rounding is negligible, so the Gram iteration and the quintic applied to the Gram matrix's
    # eigenvalues must give the standard iteration's result, to 1e-10.
    torch.manual_seed(0)
    g = _spectrum(*shape, smallest=1e-3)
    ref = orthogonalize(g, dtype=torch.float64, method="standard")
    out = orthogonalize(g, dtype=torch.float64, method=method)
    assert (out - ref).norm() < 1e-10 * ref.norm()
    assert (ref - g / g.norm(dim=(-2, -1), keepdim=True)).norm() > 0.1 * ref.norm()  # the iteration did move it


@pytest.mark.parametrize("smallest", [1e-2, 1e-4])
@pytest.mark.parametrize("shape", [(2, 256, 2304), (2, 1024, 256)])
def test_gram_newton_schulz_in_fp32_tracks_the_exact_iteration(shape, smallest):
    # fp32 is where `auto` takes the Gram form (CPUs without native bf16). Measured (2026-11-27) on momentum matrices
    # captured from real runs: <= 5e-5 from the float64 iteration; here, gradient-like spectra down to `smallest`.
    torch.manual_seed(0)
    assert _distance_from_exact(_spectrum(*shape, smallest=smallest), "gram", torch.float32) < 1e-4


@pytest.mark.parametrize("amx", [True, False])
def test_auto_takes_gram_for_long_banks_in_fp32_and_eigh_for_large_bf16_banks_without_amx(monkeypatch, amx):
    from resnetlab.engine import precision

    monkeypatch.setattr(precision, "cpu_has_amx", lambda: amx)
    torch.manual_seed(0)
    eigh = "standard" if amx else "eigh"  # with AMX, bf16 products run 4x fp32's or more: the iteration stays
    cases = [
        ((64, 576), "gram", "standard"),
        ((576, 64), "gram", "standard"),
        ((256, 512), "standard", eigh),
        ((512, 2304), "gram", eigh),
        ((1024, 256), "gram", eigh),
        ((255, 2304), "gram", "standard"),
        ((64, 64), "standard", "standard"),
    ]
    for shape, in_fp32, in_bf16 in cases:
        g = torch.randn(2, *shape)
        assert torch.equal(orthogonalize(g, dtype=torch.float32), orthogonalize(g, dtype=torch.float32, method=in_fp32))
        # The Gram iteration is fragile in half precision (see GRAM_DTYPES): bf16 takes the standard form or eigh.
        assert torch.equal(orthogonalize(g), orthogonalize(g, method=in_bf16)), shape
    with pytest.raises(ValueError, match="auto, standard, gram or eigh"):
        orthogonalize(g, method="svd")
    with pytest.raises(ValueError, match="auto, standard, gram or eigh"):  # at construction, not at the first step
        Muon([nn.Conv2d(4, 8, 3).weight], ns_method="svd")


@pytest.mark.parametrize("smallest", [1e-2, 1e-3])
@pytest.mark.parametrize("shape", [(2, 256, 2304), (2, 1024, 256)])
def test_eigh_form_in_bf16_is_closer_to_the_exact_iteration_than_the_standard_one(shape, smallest):
    # Its spectrum comes from the bf16 x itself in fp32, so bf16 rounds only the final product: no spurious
    # eigenvalues amplified as in the bf16 Gram iteration. Measured (2026-11-29) on the momentum of real ResNet-18/50
    # runs, banks of 256+: 0.004-0.009 from the float64 iteration against the standard bf16 form's 0.010-0.012. Here
    # both carry the error of rounding g to bf16 (0.03-0.07, even for an fp32 final product), and eigh ends lower.
    torch.manual_seed(0)
    g = _spectrum(*shape, smallest=smallest)
    errors = {method: _distance_from_exact(g, method, torch.bfloat16) for method in ("standard", "eigh")}
    assert errors["eigh"] < errors["standard"] < 0.08, errors


def test_eigh_form_falls_back_to_the_iteration_when_lapack_fails(monkeypatch):
    def fail(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    g = torch.randn(2, 256, 512)
    expected = orthogonalize(g, method="standard")
    monkeypatch.setattr(torch.linalg, "eigh", fail)
    assert torch.equal(orthogonalize(g, method="eigh"), expected)


def test_channels_last_filters_update_like_contiguous_ones():
    # channels_last weights are orthogonalised in their memory order (no copy); the result is the same update.
    torch.manual_seed(0)
    plain = nn.Conv2d(32, 64, 3, bias=False)
    last = nn.Conv2d(32, 64, 3, bias=False).to(memory_format=torch.channels_last)
    last.weight.data.copy_(plain.weight.data)
    start = plain.weight.detach().clone()
    opts = [Muon([m.weight], lr=1e-2) for m in (plain, last)]
    for _ in range(3):
        g = torch.randn_like(plain.weight)
        plain.weight.grad, last.weight.grad = g.clone(), g.clone().contiguous(memory_format=torch.channels_last)
        for o in opts:
            o.step()
    assert last.weight.is_contiguous(memory_format=torch.channels_last)
    step = (plain.weight - start).abs().max()
    assert step > 1e-3 and (plain.weight - last.weight).abs().max() < 0.02 * step


@pytest.mark.parametrize("method", ["standard", "gram", "eigh"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(64, 576), (576, 64), (512, 4608)])
def test_orthogonalize_equalises_singular_values(shape, dtype, method):
    torch.manual_seed(0)
    # A gradient-like matrix: 32 directions whose sizes span 100x, plus a little noise.
    g = torch.randn(shape[0], 32) @ torch.diag(torch.logspace(0, -2, 32)) @ torch.randn(32, shape[1])
    g = g + 1e-4 * torch.randn(shape)
    out = orthogonalize(g, dtype=dtype, method=method)
    assert out.shape == g.shape and out.dtype == dtype
    out = out.float()
    s = torch.linalg.svdvals(out)[:32]
    assert s.min() > 0.5 and s.max() < 1.25, s  # from 100x apart to within the iteration's ~[0.7, 1.2] band
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    # Same singular vectors as the gradient: the polar factor U V^T, up to the iteration's spread of values.
    assert torch.nn.functional.cosine_similarity(out.flatten(), (u[:, :32] @ vh[:32]).flatten(), dim=0) > 0.95


def test_iterates_in_bf16_only_where_it_is_native(monkeypatch):
    from resnetlab.engine import muon, precision

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    assert muon.ns_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)  # oneDNN would emulate bf16: slower than fp32
    assert muon.ns_dtype(torch.device("cpu")) == torch.float32
    used = []
    real = muon.orthogonalize
    monkeypatch.setattr(
        muon, "orthogonalize", lambda g, steps, dtype, method: used.append(dtype) or real(g, steps, dtype, method)
    )
    conv = nn.Conv2d(4, 8, 3)
    conv.weight.grad = torch.randn_like(conv.weight)
    before = conv.weight.detach().clone()
    Muon([conv.weight], lr=1e-2).step()
    assert used == [torch.float32] and not torch.equal(conv.weight, before)


def test_which_parameters_muon_takes():
    assert is_muon_param(nn.Conv2d(8, 16, 3).weight)
    assert is_muon_param(nn.Conv2d(8, 16, 1).weight)  # 1x1 projections are matrices too
    assert not is_muon_param(nn.Conv2d(16, 16, 3, groups=16).weight)  # depthwise: one input channel
    assert not is_muon_param(nn.Linear(8, 4).weight)  # the head stays on AdamW
    assert not is_muon_param(nn.BatchNorm2d(8).weight)
    model = create_model("mobilenet_v2", num_classes=3)
    opt = build_optimizer("muon", param_groups([(model, 1e-3)], 0.05), 1e-3)
    taken = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
    assert len(taken) == sum(is_muon_param(p) for p in model.parameters()) > 30
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_state_round_trip_continues_exactly():
    def run(split: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=3)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
        opt = build_optimizer("muon", param_groups([(model, 1e-2)], 0.05), 1e-2)
        for i in range(4):
            if split and i == 2:  # save, rebuild, load under weights_only as a checkpoint would
                buf = io.BytesIO()
                torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
                buf.seek(0)
                state = torch.load(buf, weights_only=True)
                model = create_model("resnet20", num_classes=3)
                model.load_state_dict(state["model"])
                opt = build_optimizer("muon", param_groups([(model, 1e-2)], 0.05), 1e-2)
                opt.load_state_dict(state["opt"])
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(False), run(True))


def test_auto_is_muon_from_scratch_and_adamw_for_pretrained():
    assert TrainConfig().resolved_opt() == "muon"
    assert TrainConfig(pretrained="imagenet").resolved_opt() == "adamw"
    assert TrainConfig(opt="sgd", pretrained="imagenet").resolved_opt() == "sgd"
    # Muon's updates are scaled to AdamW's size: AdamW's decay carries over; its rate measured best at twice AdamW's.
    assert TrainConfig().resolved_lr() == pytest.approx(2e-3)
    assert TrainConfig(opt="adamw").resolved_lr() == pytest.approx(1e-3)
    assert TrainConfig().resolved_wd() == TrainConfig(opt="adamw").resolved_wd() == 0.05


@pytest.mark.parametrize(("dtype", "long_products"), [(torch.float32, 2), (torch.bfloat16, 4)])
def test_gram_form_restarts_in_half_precision_only(monkeypatch, dtype, long_products):
    # fp32 builds R once and applies Q once; bf16 also folds Q into x and rebuilds R after 3 iterations.
    calls = []
    bmm = torch.bmm

    def counting_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(576 in (*a.shape[1:], *b.shape[1:]))  # touches the long side
        return bmm(a, b)

    monkeypatch.setattr(torch, "bmm", counting_bmm)
    orthogonalize(torch.randn(2, 64, 576), dtype=dtype, method="gram")
    assert sum(calls) == long_products
