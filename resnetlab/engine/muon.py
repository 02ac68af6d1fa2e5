"""Muon for convolution filters, AdamW for everything else, as one `torch.optim.Optimizer`.

Muon (Jordan et al. 2024) replaces each filter bank's momentum update by the nearest semi-orthogonal matrix, found
with a few Newton-Schulz iterations: every direction of the update moves by the same amount, so rarely-used
directions learn as fast as dominant ones. A conv weight (out, in/groups, kh, kw) is treated as the matrix
(out, in/groups * kh * kw). Depthwise filters (one input channel), norms, biases and the classifier head stay on
AdamW, as in Muon's own recipe (hidden layers only). Where the iteration runs in fp32 (CPUs without native bf16),
long banks (3x3 and bottleneck 1x1 convolutions) iterate on their Gram matrix instead (Gram Newton-Schulz: the same
polynomial with fewer products; not in bf16, where it is fragile: benchmarks/RESULTS.md). On CPUs with AVX-512 BF16 but
no AMX, where bf16 products are only ~2x fp32's, banks with 256+ rows and columns take the polynomial from one fp32
eigendecomposition of their Gram matrix instead of iterating (`method="eigh"`).

The update is rescaled by 0.2 * sqrt(max(rows, cols)) (Liu et al. 2025, "Muon is scalable"): its RMS then matches a
typical AdamW update, so AdamW's learning rates and decoupled weight decay are the right size for it, and one
schedule drives both kinds of parameter (`resnetlab train` defaults Muon to twice AdamW's rate, by measurement: see
`config.BASE_LR`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.adamw import adamw

from resnetlab.engine import precision

# The quintic Newton-Schulz coefficients of Muon's reference implementation: they push every singular value of a
# Frobenius-normalised matrix into about [0.7, 1.2] in five steps, which is orthogonal enough for an update.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


# Gram Newton-Schulz (Zhang, Amsel, Chen & Dao 2026) for banks at least this many times wider than tall (or taller
# than wide), when the iteration runs in fp32: it computes the same polynomial with fewer products there (all of
# ResNet-50's long banks in fp32 on this CPU: 652 -> 387 ms; at aspect 2 it was no faster in bf16, fp32 unmeasured).
GRAM_MIN_ASPECT = 4
# In half precision the Gram form is fragile: the polynomial is carried in an (s, s) matrix rounded to 2^-8 of its
# largest entries in bf16, and (the paper's explanation) rounding in R gives spurious eigenvalues that later
# iterations amplify.
# On momentum matrices captured from real runs, bf16 Gram with a restart every 3 iterations ended up to 2.1x the
# update's norm away from the exact iteration (10 of 144 banks above 0.1; standard bf16 at most 0.03), every 2 at
# 1.5-1.7x the standard form's error. So `auto` takes it in fp32 only (errors <= 5e-5 on the same matrices).
GRAM_DTYPES = (torch.float32, torch.float64)
# In half precision the Gram form rebuilds its Gram matrix from x every this many iterations (4 long products in 5
# iterations). In fp32 it never does (2 long products): on momentum matrices from real runs both stayed within 6e-5 of
# the float64 iteration, the worst synthetic case (a rank-1 bank) 2.0e-4 with restarts and 2.8e-4 without, and
# ResNet-18's three 512 x 4608 banks took 329 -> 215 ms on a 2-core AVX2 CPU (benchmarks/RESULTS.md).
GRAM_RESTART_EVERY = 3
# The eigendecomposition route (`_eigh_newton_schulz`) for banks whose short side is at least this, in bf16 on CPUs
# without AMX (AVX-512 BF16 only: bf16 products 2.2x fp32's there). With AMX the whole bf16 iteration of three
# 512 x 4608 banks took 67.5 ms, about what its fp32 Gram matrix (~29 ms) and `eigh` (~37 ms) would cost, so AMX
# keeps the iteration (an estimate from the eighth session's timings, not measured there). On a 2-core EPYC of that
# kind, 3 x 512 x 4608 banks (ResNet-18/50's 3x3 convolutions at 512 channels) took 274 -> 141 ms, and all of
# ResNet-50's banks 718 -> 508 ms; from 256 rows it won on long banks and was within 1.6 ms either way on square-ish
# ones, and below 256 a stack costs < 7 ms in any form (benchmarks/RESULTS.md).
EIGH_MIN_SIDE = 256
METHODS = ("auto", "standard", "gram", "eigh")


def orthogonalize(
    g: Tensor, steps: int = NS_STEPS, dtype: torch.dtype = torch.bfloat16, method: str = "auto"
) -> Tensor:
    """Approximately U V^T of each g = U S V^T, for a matrix (m, n) or a stack of them (k, m, n), computed in dtype.

    `method`: "standard" (Muon's reference iteration, bit-equal to `torch.optim.Muon`), "gram" (the same polynomial
    iterated on the Gram matrix), "eigh" (the same polynomial from the Gram matrix's eigenvalues), or "auto" (gram in
    fp32 for aspect ratios >= GRAM_MIN_ASPECT, eigh in bf16 on CPUs without AMX for banks of EIGH_MIN_SIDE+ rows and
    columns, else standard).
    """
    _check_method(method)
    x = g.to(dtype)
    single = x.ndim == 2
    if single:
        x = x.unsqueeze(0)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values <= 1, inside the iteration's basin
    # A tall x is multiplied from the right instead of being transposed: bmm reads a transposed operand in place,
    # while a transposed output or `@` on a stack of one made oneDNN copy every product (ResNet-50's (2048, 1024)
    # filter bank: 72 -> 37 ms per step).
    x = _FORMS[auto_method(x) if method == "auto" else method](x, steps, tall=x.size(-2) > x.size(-1))
    return x[0] if single else x


def auto_method(x: Tensor) -> str:
    """The fastest accurate form for a stack x (k, m, n) in its dtype and on its device (see `orthogonalize`)."""
    short, long = sorted(x.shape[-2:])
    if x.dtype in GRAM_DTYPES and long >= GRAM_MIN_ASPECT * short:
        return "gram"
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and short >= EIGH_MIN_SIDE and not precision.cpu_has_amx():
        return "eigh"
    return "standard"


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be auto, standard, gram or eigh, not {method!r}")


def _gram(x: Tensor, tall: bool) -> Tensor:
    """The short side's Gram matrix of a stack x (k, m, n): (k, s, s), s = min(m, n), without copying x."""
    return torch.bmm(x.mT, x) if tall else torch.bmm(x, x.mT)


def _newton_schulz(x: Tensor, steps: int, tall: bool) -> Tensor:
    """Muon's iteration on a stack x (k, m, n): x <- a x + (b G + c G^2) x with G = x x^T, on the short side."""
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = _gram(x, tall)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.baddbmm(x, x, poly, beta=a) if tall else torch.baddbmm(x, poly, x, beta=a)  # a x + (b G + c G^2) x
    return x


def _gram_newton_schulz(x: Tensor, steps: int, tall: bool) -> Tensor:
    """`_newton_schulz`'s result with fewer products on a long x (k, s, L), s << L (or its transpose).

    Each iteration multiplies x by M = a I + b R + c R^2, a polynomial in its Gram matrix R (s, s). All these
    matrices commute, so x_t = Q x_0 with Q = M_1 ... M_t, and the next Gram matrix is M R M: both stay (s, s). Only
    building R from x and applying Q touch the long side: 2 long products in 5 iterations instead of 10 (4 in half
    precision, which restarts every GRAM_RESTART_EVERY iterations).
    """
    a, b, c = NS_COEFFICIENTS

    def apply(q: Tensor, x: Tensor) -> Tensor:
        return torch.bmm(x, q) if tall else torch.bmm(q, x)  # q is symmetric

    every = steps if x.dtype in GRAM_DTYPES else GRAM_RESTART_EVERY
    q: Tensor | None = None
    for t in range(steps):
        if t % every == 0:  # restart: fold Q into x, rebuild R from it
            if q is not None:
                x = apply(q, x)
            r, q = _gram(x, tall), None
        z = torch.baddbmm(r, r, r, beta=b, alpha=c)  # b R + c R^2
        if q is None:
            q = z.clone()
            q.diagonal(dim1=-2, dim2=-1).add_(a)  # a I + Z
        else:
            q = torch.baddbmm(q, q, z, beta=a)  # Q (a I + Z)
        if (t + 1) % every and t + 1 < steps:  # R is needed by the next iteration
            rz = torch.baddbmm(r, r, z, beta=a)  # R (a I + Z)
            r = torch.baddbmm(rz, z, rz, beta=a)  # (a I + Z) R (a I + Z)
    return x if q is None else apply(q, x)


def _eigh_newton_schulz(x: Tensor, steps: int, tall: bool) -> Tensor:
    """`_newton_schulz`'s result on x (k, m, n) from one eigendecomposition of its Gram matrix R (s, s), s = min(m, n).

    The iteration maps each singular value sigma of x to p(sigma), p the composed quintic, so it is x Q (or Q x) with
    Q = V diag(p(sigma) / sigma) V^T from R = V diag(sigma^2) V^T. R and its eigenvectors are computed in fp32 from x
    itself (rounded to bf16 or not): Q then matches the x it is applied to, which is what the Gram iteration's bf16
    matrices lost. Only the final product runs in x's dtype. Should LAPACK fail (a non-finite gradient), the
    iteration runs instead, as it would have.
    """
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    try:
        lam, v = torch.linalg.eigh(_gram(xf, tall))  # (k, s), (k, s, s)
    except torch.linalg.LinAlgError:
        return _newton_schulz(x, steps, tall)
    gain = _polynomial_gain(lam, steps).to(v.dtype)  # p(sigma) / sigma, (k, s)
    q = torch.bmm(v * gain.unsqueeze(-2), v.mT).to(x.dtype)  # V diag(gain) V^T, symmetric
    return torch.bmm(x, q) if tall else torch.bmm(q, x)


def _polynomial_gain(lam: Tensor, steps: int) -> Tensor:
    """p(sigma) / sigma for sigma^2 = lam (clamped at 0), computed as a running gain so sigma = 0 gives a^steps."""
    a, b, c = NS_COEFFICIENTS
    s2 = lam.double().clamp_min(0)  # rounding can leave an eigenvalue of a singular R slightly negative
    gain = torch.ones_like(s2)
    for _ in range(steps):
        t = gain * gain * s2  # the current sigma^2
        gain = gain * (a + b * t + c * t * t)
    return gain


_FORMS = {"standard": _newton_schulz, "gram": _gram_newton_schulz, "eigh": _eigh_newton_schulz}


def ns_dtype(device: torch.device) -> torch.dtype:
    """bf16 where its matrix products are native (CUDA with bf16, CPUs with AVX-512 BF16 or AMX), else fp32.

    oneDNN emulates bf16 on other CPUs, slower than fp32 there (`precision.cpu_supports_bf16`).
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and precision.cpu_supports_bf16() else torch.float32


def memory_order(p: Tensor) -> tuple[int, ...]:
    """The dimension order in which a conv weight is laid out: (out, kh, kw, in) when channels_last.

    Orthogonalisation commutes with permuting columns (the polar factor of X P is that of X, times P), so a filter
    bank flattened in its memory order is as good a matrix as (out, in * kh * kw), and needs no copy.
    """
    if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
        return (0, 2, 3, 1)
    return (0, 1, 2, 3)


def is_muon_param(p: Tensor) -> bool:
    """Conv filters with more than one input channel per group: the matrices Muon orthogonalises."""
    return p.ndim == 4 and p.shape[1] * p.shape[2] * p.shape[3] > 1 and p.shape[1] > 1


class Muon(torch.optim.Optimizer):
    """Muon (Nesterov momentum, orthogonalised) on conv filters, AdamW on the rest; per-group lr and weight_decay.

    Groups are split on construction, each half flagged `muon` True or False, so schedulers that set `lr` on every
    group drive both. Decay is decoupled: p <- p * (1 - lr * wd) for either kind.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]] | Iterable[Tensor],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        ns_steps: int = NS_STEPS,
        ns_dtype: torch.dtype | None = None,
        ns_method: str = "auto",
    ) -> None:
        self.ns_dtype = ns_dtype  # None: `ns_dtype(device)` of the parameters
        _check_method(ns_method)
        self.ns_method = ns_method  # see `orthogonalize`
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        split = []
        for group in groups:
            params_ = list(group["params"])
            for muon in (True, False):
                chosen = [p for p in params_ if is_muon_param(p) == muon]
                if chosen:
                    split.append({**group, "params": chosen, "muon": muon})
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, betas=betas, eps=eps, ns_steps=ns_steps)
        super().__init__(split, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
            (self._muon_step if group["muon"] else self._adamw_step)(group, params)
        return loss

    def _muon_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        beta = group["momentum"]
        dtype = self.ns_dtype or ns_dtype(params[0].device)
        for p in params:
            if not self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_lerp_(bufs, [p.grad for p in params], 1 - beta)
        by_shape: dict[tuple[int, int], list[tuple[Tensor, Tensor, tuple[int, ...]]]] = {}
        for p, buf in zip(params, bufs):
            by_shape.setdefault((p.shape[0], p[0].numel()), []).append((p, buf, memory_order(p)))
        # Filter banks of one shape are orthogonalised together: batched products use this CPU's two cores better
        # than one product at a time (optimizer step, bench_optim.py: ResNet-18 118 -> 107 ms, ResNet-50 305 -> 271).
        for shape, items in by_shape.items():
            stack = torch.empty((len(items), *shape), dtype=dtype, device=params[0].device)  # (k, out, fan_in)
            for slot, (p, buf, order) in zip(stack, items):
                # Nesterov, written in dtype straight into the stack, flattened in p's memory order (no copies).
                grad = p.grad.permute(order)
                torch.lerp(grad, buf.permute(order), beta, out=slot.view(grad.shape))
            ortho = orthogonalize(stack, group["ns_steps"], dtype, self.ns_method)
            scale = 0.2 * math.sqrt(max(shape))  # RMS of an AdamW update (see module docstring)
            targets = [p.permute(order) for p, _, order in items]  # views: the update lands in p
            torch._foreach_add_(targets, [o.view(t.shape) for t, o in zip(targets, ortho)], alpha=-group["lr"] * scale)

    def _adamw_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        # PyTorch's own AdamW arithmetic (the functional form `torch.optim.AdamW` runs); decay was applied in `step`.
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros(())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adamw(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=0.0,
            eps=group["eps"],
            maximize=False,
            foreach=True,
        )
