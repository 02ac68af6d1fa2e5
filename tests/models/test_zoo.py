"""Every registered model honours the common model interface; architecture facts of the non-torchvision models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from resnetlab import create_model, list_models
from resnetlab.errors import ResnetlabError
from resnetlab.models.cifar_resnet import ShortcutA

CIFAR_NAMES = {f"{kind}{depth}" for kind in ("resnet", "plain") for depth in (20, 32, 44, 56, 110)}
CFG_KEYS = {"input_size", "mean", "std", "crop_pct", "interpolation", "classifier"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def img_size(name: str) -> int:
    return 32 if name in CIFAR_NAMES else 64


def build(name: str, **kwargs) -> nn.Module:
    return create_model(name, num_classes=kwargs.pop("num_classes", 10), **kwargs)


def test_registry_holds_the_whole_zoo() -> None:
    expected = {
        *CIFAR_NAMES,
        *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
        "wide_resnet50_2",
        "wide_resnet101_2",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "googlenet",
        "mobilenet_v2",
        "mobilenet_v1",
    }
    assert expected <= set(list_models())
    assert list_models("plain*") == sorted(f"plain{d}" for d in (20, 32, 44, 56, 110))


def test_unknown_model_names_the_closest() -> None:
    with pytest.raises(ResnetlabError, match="resnet50"):
        create_model("resnet05")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": "6"}, "num_classes='6': a whole number, at least 0"),
        ({"num_classes": -1}, "num_classes=-1: a whole number, at least 0"),
        ({"num_classes": True}, "num_classes=True"),
        ({"in_chans": 0}, "in_chans=0: a whole number, at least 1"),
    ],
)
def test_bad_build_arguments_are_one_line(kwargs, message) -> None:
    # They once reached PyTorch (a TypeError deep in a layer) or built a model with a negative-width head.
    with pytest.raises(ResnetlabError, match=message):
        create_model("resnet18", **kwargs)


def test_pretrained_true_means_imagenet(monkeypatch) -> None:
    from resnetlab.models import weights

    asked = []
    monkeypatch.setattr(
        weights, "load_pretrained", lambda model, arch, pretrained, num_classes: asked.append(pretrained)
    )
    create_model("resnet18", pretrained=True)  # timm's spelling
    assert asked == ["imagenet"]


@pytest.mark.parametrize("name", list_models())
def test_model_interface(name: str) -> None:
    model = build(name).eval()
    size = img_size(name)
    cfg = model.default_cfg
    assert CFG_KEYS <= set(cfg)
    assert cfg["input_size"][0] == 3 and cfg["interpolation"] in ("bilinear", "bicubic")
    assert model.get_classifier() is getattr(model, cfg["classifier"])
    assert model.num_classes == 10

    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        out = model(x)
    assert feats.ndim == 4 and feats.shape[:2] == (2, model.num_features)
    assert pooled.shape == (2, model.num_features)
    assert out.shape == (2, 10)
    torch.testing.assert_close(logits, out)

    # stages(): input to output; last is the head, second-to-last a real module producing the last feature map.
    stages = model.stages()
    assert stages[-1][1] is model.get_classifier()
    seen: list[torch.Tensor] = []
    handle = stages[-2][1].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert len(seen) == 1 and seen[0].shape == feats.shape
    stage_params = [id(p) for _, m in stages for p in m.parameters()]
    assert len(stage_params) == len(set(stage_params)), "a parameter belongs to two stages"
    assert set(stage_params) == {id(p) for p in model.parameters()}, "a parameter belongs to no stage"

    model.reset_classifier(4)
    assert model.num_classes == 4 and model.stages()[-1][1] is model.get_classifier()
    with torch.no_grad():
        assert model(x).shape == (2, 4)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", list_models())
def test_built_without_a_classifier_as_after_reset_classifier_0(name: str) -> None:
    # timm: num_classes=0 gives features, in training mode too (GoogLeNet's aux heads built 0-wide outputs).
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "Initializing zero-element tensors is a no-op"
        built = build(name, num_classes=0).train()
    reset = build(name, num_classes=5)
    reset.reset_classifier(0)
    size = img_size(name)
    x = torch.randn(2, 3, size, size)
    shapes = [[o.shape for o in (out if isinstance(out, tuple) else (out,))] for out in (built(x), reset.train()(x))]
    assert shapes[0] == shapes[1] and shapes[0][0] == (2, built.num_features)


@pytest.mark.parametrize("name", list_models())
def test_in_chans_and_training_step(name: str) -> None:
    model = build(name, in_chans=1, num_classes=3).train()
    size = img_size(name)
    assert model.default_cfg["input_size"][0] == 1
    out = model(torch.randn(2, 1, size, size))
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, 3)
    loss = sum(o.square().mean() for o in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    first = next(p for p in model.parameters() if p.ndim == 4)
    assert first.shape[1] == 1 and first.grad is not None and torch.isfinite(first.grad).all()


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "googlenet", "resnet20", "mobilenet_v1"])
def test_reset_classifier_keeps_key_names(name: str) -> None:
    model = build(name, num_classes=1000)
    before = {k: v.shape for k, v in model.state_dict().items()}
    model.reset_classifier(6)
    after = {k: v.shape for k, v in model.state_dict().items()}
    assert before.keys() == after.keys()
    changed = {k for k in before if before[k] != after[k]}
    head = model.default_cfg["classifier"]
    assert changed and all(k.startswith((head + ".", "aux1.fc2", "aux2.fc2")) for k in changed)


def test_googlenet_aux_outputs_only_in_training() -> None:
    model = build("googlenet", num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert type(out).__name__ == "GoogLeNetOutputs"
    assert [t.shape for t in out] == [(2, 5)] * 3
    model.reset_classifier(7)  # the aux heads follow the new class count, so aux losses still line up
    assert [t.shape for t in model(x)] == [(2, 7)] * 3
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)
    no_aux = build("googlenet", num_classes=5, aux_logits=False).train()
    assert isinstance(no_aux(x), torch.Tensor)
    assert n_params(no_aux) < n_params(model)


def test_resnet_options() -> None:
    model = build("resnet50", zero_init_residual=True, drop_rate=0.3)
    assert all(torch.count_nonzero(block.bn3.weight) == 0 for layer in model.stages()[1:5] for block in layer[1])
    assert model.dropout.p == 0.3
    custom = create_model("resnet50", num_classes=10, groups=32, width_per_group=4)
    assert n_params(custom) == n_params(build("resnext50_32x4d"))
    with pytest.raises(ValueError, match="BasicBlock"):
        create_model("resnet18", groups=2)


# CIFAR-10 (10 classes) counts: 0.27M/0.46M/0.66M/0.85M/1.7M in the paper's table 6; the exact values are those of the
# real checkpoints (test_cifar_keys_match_real_checkpoints sums their tensors).
@pytest.mark.parametrize(
    ("depth", "expected"),
    [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962)],
)
def test_cifar_param_counts(depth: int, expected: int) -> None:
    assert n_params(build(f"resnet{depth}")) == expected
    assert n_params(build(f"plain{depth}")) == expected  # option A shortcuts have no parameters


def test_cifar_keys_match_real_checkpoints(shared: Path) -> None:
    files = sorted((shared / "weights" / "cifar10-resnet").glob("resnet*.th"))
    assert files, "no CIFAR checkpoints found"
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        # The converter's renaming: strip DataParallel's `module.`, their `linear` is our `fc`.
        state = {k.removeprefix("module.").replace("linear.", "fc."): v for k, v in state.items()}
        model = build(path.name.split("-")[0])
        ours = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        assert ours == {k: v.shape for k, v in state.items()}, path.name
        params = sum(v.numel() for k, v in state.items() if "running_" not in k)
        assert params == n_params(model), path.name


def test_cifar_defaults_and_depth() -> None:
    model = create_model("resnet56", num_classes=10)
    assert model.default_cfg["input_size"] == (3, 32, 32)
    assert model.default_cfg["crop_pct"] == 1.0
    assert model.default_cfg["mean"] == pytest.approx((0.4914, 0.4822, 0.4465))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 56  # 6n+2 weighted layers, no projection convs
    assert [len(layer) for layer in (model.layer1, model.layer2, model.layer3)] == [9, 9, 9]


def test_cifar_shortcut_a_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = ShortcutA(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0


def test_plain_twin_is_the_same_net_without_shortcuts() -> None:
    res, plain = build("resnet20").eval(), build("plain20").eval()
    assert res.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(res.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(res(x), plain(x))
        # Zeroing each block's last BN turns a residual block into identity + ReLU, a plain block into zeros.
        for m in list(res.modules()) + list(plain.modules()):
            if hasattr(m, "bn2") and hasattr(m, "residual"):
                m.bn2.weight.zero_()
                m.bn2.bias.zero_()
        feats_res = res.forward_features(x)
        feats_plain = plain.forward_features(x)
    assert torch.count_nonzero(feats_plain) == 0
    assert torch.count_nonzero(feats_res) > 0


def test_mobilenet_v1_matches_the_paper() -> None:
    model = create_model("mobilenet_v1")
    assert n_params(model) == 4_231_976  # the paper's table 8: 4.2M
    dw = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(dw) == 13 and all(m.groups == m.in_channels == m.out_channels for m in dw)
    assert model.num_features == 1024
    assert create_model("mobilenet_v1", alpha=0.5).num_features == 512
    assert n_params(create_model("mobilenet_v1_075")) == pytest.approx(2.6e6, rel=0.01)  # table 6: 2.6M
    assert n_params(create_model("mobilenet_v1_050")) == pytest.approx(1.3e6, rel=0.03)  # table 6: 1.3M
    with torch.no_grad():
        feats = model.eval().forward_features(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 1024, 7, 7)


def test_imagenet_default_cfg() -> None:
    cfg = create_model("resnet50").default_cfg
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bilinear"
    # Each model owns its cfg: changing one must not leak into the next.
    cfg["crop_pct"] = 1.0
    assert create_model("resnet50").default_cfg["crop_pct"] == 0.875
