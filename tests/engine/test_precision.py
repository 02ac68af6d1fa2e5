"""Device and autocast choice: what `--device` and `--amp` resolve to, and the one-line errors for bad values."""

from __future__ import annotations

import pytest
import torch

from resnetlab.engine.precision import resolve_precision, select_device
from resnetlab.errors import ResnetlabError


def test_auto_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(None) == select_device("auto") == torch.device("cpu")
    p = resolve_precision("cpu", "off")
    assert p.device == torch.device("cpu") and p.amp_dtype is None and p.channels_last


@pytest.mark.parametrize(
    "device, needle",
    [
        ("gpu", "--device gpu: not a device resnetlab trains on; use auto, cpu, cuda, cuda:N or mps"),
        ("meta", "--device meta: not a device resnetlab trains on"),
        ("cuda:x", "--device cuda:x: not a device"),
    ],
)
def test_unknown_devices_are_one_line(device, needle):
    with pytest.raises(ResnetlabError, match=needle):
        select_device(device)


def test_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ResnetlabError, match="--device cuda: CUDA is not available on this machine; use --device cpu"):
        select_device("cuda")


def test_mps_where_apple_gpus_are_absent(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ResnetlabError, match="--device mps: Apple's MPS is not available on this machine"):
        select_device("mps")


def test_cuda_index_beyond_the_machines_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ResnetlabError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        select_device("cuda:2")


def test_bad_amp_values():
    with pytest.raises(ResnetlabError, match="--amp 'fp8': choose one of"):
        resolve_precision("cpu", "fp8")
    with pytest.raises(ResnetlabError, match="--amp fp16 is for CUDA"):
        resolve_precision("cpu", "fp16")
