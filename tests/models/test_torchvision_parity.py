"""Our torchvision-compatible models load torchvision's state dicts with strict=True and compute the same outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from resnetlab import create_model

TORCHVISION_NAMES = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "googlenet",
    "mobilenet_v2",
]
# torchvision's googlenet warns unless init_weights is given, and drops the aux heads unless asked.
TV_KWARGS = {"googlenet": {"aux_logits": True, "init_weights": True}}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torchvision_model(name: str, **kwargs) -> nn.Module:
    model = torchvision.models.get_model(name, weights=None, **{**TV_KWARGS.get(name, {}), **kwargs})
    # Give every BatchNorm non-trivial statistics and affine terms, so eval outputs depend on all of them landing.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


def assert_same_output(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_loads_torchvision_state_dict_and_matches_outputs(name: str) -> None:
    theirs = torchvision_model(name).eval()
    ours = create_model(name).eval()
    assert n_params(ours) == n_params(theirs)
    # The published count (torchvision's weights metadata, no download) leaves out GoogLeNet's aux heads.
    published = torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]
    assert sum(p.numel() for k, p in ours.named_parameters() if not k.startswith("aux")) == published
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert_same_output(ours, theirs, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet50", 25_557_032), ("resnet18", 11_689_512), ("googlenet", 6_624_904), ("mobilenet_v2", 3_504_872)],
)
def test_param_count_literals(name: str, expected: int) -> None:
    kwargs = {"aux_logits": False} if name == "googlenet" else {}
    assert n_params(create_model(name, **kwargs)) == expected


def test_googlenet_training_outputs_match_including_aux_heads() -> None:
    theirs = torchvision_model("googlenet", num_classes=5).train()
    ours = create_model("googlenet", num_classes=5).train()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for model in (ours, theirs):
        torch.manual_seed(3)  # same dropout masks, drawn in the same order (aux1, aux2, main head)
        with torch.no_grad():
            outs.append(model(x))
    assert type(outs[0]).__name__ == "GoogLeNetOutputs"
    assert outs[0]._fields == outs[1]._fields == ("logits", "aux_logits2", "aux_logits1")
    for a, b in zip(outs[0], outs[1]):
        assert a.shape == (2, 5)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_googlenet_transform_input_matches() -> None:
    theirs = torchvision_model("googlenet", num_classes=5, transform_input=True).eval()
    ours = create_model("googlenet", num_classes=5, transform_input=True).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert_same_output(ours, theirs, torch.randn(2, 3, 64, 64))


def test_googlenet_without_aux_matches_torchvision_keys() -> None:
    theirs = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    ours = create_model("googlenet", aux_logits=False)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert not any(k.startswith("aux") for k in ours.state_dict())


@pytest.mark.parametrize("width_mult", [0.5, 1.4])
def test_mobilenet_v2_width_mult_matches(width_mult: float) -> None:
    theirs = torchvision_model("mobilenet_v2", num_classes=10, width_mult=width_mult).eval()
    ours = create_model("mobilenet_v2", num_classes=10, width_mult=width_mult).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert_same_output(ours, theirs, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual_matches_torchvision(name: str) -> None:
    torch.manual_seed(0)
    theirs = torchvision.models.get_model(name, weights=None, zero_init_residual=True)
    ours = create_model(name, zero_init_residual=True)
    last_bn = "bn2" if name == "resnet18" else "bn3"
    for key, value in theirs.state_dict().items():
        if key.endswith(f"{last_bn}.weight"):
            assert torch.count_nonzero(value) == 0
            assert torch.count_nonzero(ours.state_dict()[key]) == 0
