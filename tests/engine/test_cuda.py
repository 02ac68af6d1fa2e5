"""The CUDA paths: AMP (bf16, and fp16 with a grad scaler), channels_last, pinned non-blocking batches, EMA, the
frozen-backbone feature cache, exact resume, each epoch's own BatchNorm statistics, checkpoints that load on a
CPU-only machine, and predict.

CI has no GPU, so every test here is skipped there; they run on a lent GPU machine
(`python -m pytest tests/engine/test_cuda.py`). DDP with nccl needs two GPUs (NCCL refuses two ranks on one
device), so it is not covered here; gloo on CPU is (test_ddp_gloo.py).
"""

from __future__ import annotations

import pytest
import torch

from resnetlab.engine.checkpoint import load_checkpoint, model_from_checkpoint
from resnetlab.engine.fit import fit
from tests.engine.conftest import full_and_resumed, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _deterministic():
    # Exact-resume checks compare weights bit for bit: cuDNN must pick the same (deterministic) kernels each run.
    # TF32 is off so that fp32 scores on the GPU can be compared with the CPU's at 1e-4: with PyTorch's default
    # (TF32 convolutions) they differed by 1.6e-4 on an H100 (2026-11-27).
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    yield
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = before


def test_auto_precision_on_cuda():
    from resnetlab.engine.precision import resolve_precision

    p = resolve_precision()
    assert p.device.type == "cuda" and p.channels_last
    assert p.amp_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert resolve_precision(amp="fp16").needs_grad_scaler and not p.needs_grad_scaler


def test_device_loader_yields_cuda_channels_last(digits_dir):
    from resnetlab.data.folder import make_splits
    from resnetlab.data.loader import DeviceLoader, ImageDataset, build_loader
    from resnetlab.data.transforms import BatchNormalize, build_transform

    splits = make_splits(digits_dir, val_fraction=0.2, seed=0)
    tf = build_transform("eval", 16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), normalize=False)
    dataset = ImageDataset(splits.train, tf)
    loader = build_loader(dataset, batch_size=8, shuffle=False, num_workers=0, device_type="cuda")
    assert loader.pin_memory
    device_loader = DeviceLoader(loader, BatchNormalize(tf.mean, tf.std), "cuda", torch.channels_last)
    images, labels = next(iter(device_loader))
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last) and images.shape == (8, 3, 16, 16)
    cpu_images, _ = next(iter(loader))  # the same batch normalised on the CPU
    expected = BatchNormalize(tf.mean, tf.std)(cpu_images)
    torch.testing.assert_close(images.cpu(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_fit_on_cuda_and_checkpoint_loads_on_cpu(digits_dir, tmp_path, amp):
    out = tmp_path / "run"
    summary = fit(tiny_config(digits_dir, out, epochs=2, amp=amp, device="cuda"), log=lambda _: None)
    assert summary["epochs_run"] == 2 and summary["train_images_per_s"] > 0
    ckpt = load_checkpoint(out / "best.pt")  # map_location="cpu": what a CPU-only machine does
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())
    scale = ckpt["scaler"].get("scale") if ckpt["scaler"] else None
    assert (scale is not None) == (amp == "fp16")  # the grad scaler runs, and is saved, only for fp16
    model = model_from_checkpoint(ckpt)
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


@pytest.mark.parametrize("ema", [0.0, 0.99])
def test_resume_is_exact_on_cuda(digits_dir, tmp_path, ema):
    overrides = {"epochs": 3, "device": "cuda", "amp": "fp16", "dropout": 0.2, "mixup": 0.4, "ema": ema}
    a, b = full_and_resumed(digits_dir, tmp_path, 2, **overrides)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["scaler"]["scale"] == b["scaler"]["scale"]


def test_bn_stats_epoch_on_cuda(digits_dir, tmp_path):
    from tests.engine.test_bn_stats import assert_fit_saves_each_epochs_own_statistics

    assert_fit_saves_each_epochs_own_statistics(digits_dir, tmp_path, device="cuda", amp="bf16")


def test_frozen_feature_cache_on_cuda(digits_dir, tmp_path):
    from resnetlab.engine.fit import build_model

    cfg = tiny_config(digits_dir, tmp_path / "run", mode="frozen", augment="none", epochs=3, device="cuda")
    model, _ = build_model(cfg.merge({"pretrained": None}), 3)
    torch.save(model.state_dict(), tmp_path / "start.pt")
    summary = fit(cfg.merge({"pretrained": str(tmp_path / "start.pt")}), log=lambda _: None)
    assert summary["feature_cache"]
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, after[k])}
    assert changed == {"fc.weight", "fc.bias"}


def test_predict_on_cuda_matches_cpu(digits_dir, tmp_path):
    from resnetlab.predict import Classifier

    fit(tiny_config(digits_dir, tmp_path / "run", epochs=2, device="cuda"), log=lambda _: None)
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    paths = sorted(digits_dir.rglob("*.png"))[:24]
    gpu = Classifier.from_checkpoint(ckpt, device="cuda", amp="off").predict_paths(paths, topk=3)
    cpu = Classifier.from_checkpoint(ckpt, device="cpu", amp="off").predict_paths(paths, topk=3)
    for g, c in zip(gpu, cpu):
        assert [p["label"] for p in g["predictions"]] == [p["label"] for p in c["predictions"]]
        for pg, pc in zip(g["predictions"], c["predictions"]):
            assert pg["score"] == pytest.approx(pc["score"], abs=1e-4)


@pytest.mark.parametrize(
    "dtype, method", [(torch.float32, "standard"), (torch.float32, "gram"), (torch.bfloat16, "standard")]
)
def test_muon_on_cuda_matches_cpu(dtype, method):
    # The same filters, gradients and Newton-Schulz dtype on both devices: the updates agree to rounding. `fit` picks
    # bf16 on a GPU that has it, as on a CPU with native bf16, and then the standard iteration; fp32 takes the Gram
    # form for this 128 x 576 bank. Measured on an H200 (2026-11-27, seeds 0 and 1): fp32 < 5e-5 of the largest move
    # for both forms, bf16 0.008-0.009.
    from resnetlab.engine.muon import Muon, ns_dtype

    assert ns_dtype(torch.device("cuda")) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    torch.manual_seed(0)
    cpu = torch.nn.Conv2d(64, 128, 3, bias=False)
    gpu = torch.nn.Conv2d(64, 128, 3, bias=False).cuda().to(memory_format=torch.channels_last)
    gpu.weight.data.copy_(cpu.weight.data)
    start = cpu.weight.detach().clone()
    opts = [Muon([m.weight], lr=1e-2, weight_decay=0.05, ns_dtype=dtype, ns_method=method) for m in (cpu, gpu)]
    for _ in range(3):
        g = torch.randn_like(cpu.weight)
        cpu.weight.grad, gpu.weight.grad = g.clone(), g.cuda().contiguous(memory_format=torch.channels_last)
        for o in opts:
            o.step()
    moved = (cpu.weight - start).abs().max()
    diff = (gpu.weight.cpu() - cpu.weight).abs().max()
    assert moved > 1e-2 and diff < (1e-4 if dtype == torch.float32 else 0.02) * moved
