"""The four real CIFAR-10 ResNet files: converted checkpoints give the same logits as the original module layout
(akamaster's pytorch_resnet_cifar10, re-implemented below) and predict real photos through `resnetlab predict`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from resnetlab.data import cifar10
from resnetlab.models import create_model

# ---------------------------------------------------------------------------------- reference: akamaster's layout


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            # Option A: subsample by 2, zero-pad planes//4 channels on each side.
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ReferenceResNet(nn.Module):
    def __init__(self, num_blocks, num_classes=10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks, stride=1)
        self.layer2 = self._make_layer(32, num_blocks, stride=2)
        self.layer3 = self._make_layer(64, num_blocks, stride=2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


# ---------------------------------------------------------------------------------- tests

DEPTHS = (20, 32, 44, 56)


def _weights(shared: Path, depth: int) -> Path:
    files = sorted((shared / "weights" / "cifar10-resnet").glob(f"resnet{depth}-*.th"))
    if not files:
        pytest.skip(f"resnet{depth} CIFAR-10 weights not in {shared}")
    return files[0]


def _reference(path: Path, depth: int) -> nn.Module:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in raw["state_dict"].items()}
    model = ReferenceResNet((depth - 2) // 6)
    model.load_state_dict(state, strict=False)  # strict=False only for the absent num_batches_tracked counters
    missing = set(model.state_dict()) - set(state)
    assert all(k.endswith("num_batches_tracked") for k in missing)
    return model.eval()


@pytest.mark.parametrize("depth", DEPTHS)
def test_converted_checkpoint_matches_original_layout(shared, tmp_path, depth):
    from resnetlab.engine.checkpoint import load_checkpoint, model_from_checkpoint

    path = _weights(shared, depth)
    out = cifar10.checkpoint_from_cifar_weights(path, tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(out)  # weights_only=True
    assert ckpt["arch"] == f"resnet{depth}" and ckpt["classes"] == list(cifar10.CLASSES)
    assert tuple(ckpt["default_cfg"]["input_size"]) == (3, 32, 32)
    assert ckpt["default_cfg"]["mean"] == pytest.approx((0.485, 0.456, 0.406))  # akamaster normalises this way

    ours = model_from_checkpoint(ckpt).eval()
    ref = _reference(path, depth)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(depth))
    with torch.no_grad():
        expected, actual = ref(x), ours(x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert expected.std() > 1.0  # real logits, not a degenerate all-equal output


def test_predicts_real_photos_through_the_cli(shared, tmp_path, capsys):
    from resnetlab.cli import main
    from resnetlab.predict import load

    images = shared / "images"
    files = [str(_weights(shared, d)) for d in DEPTHS]
    assert main(["experiment", "convert-cifar10", *files, "--out", str(tmp_path)]) == 0
    converted = sorted(tmp_path.glob("resnet*.pt"))
    assert [p.name for p in converted] == sorted(f"resnet{d}-cifar10.pt" for d in DEPTHS)
    capsys.readouterr()
    # The converted file is also a starting point for training (its name carries no stale sha256 prefix).
    model = create_model(f"resnet{DEPTHS[0]}", num_classes=10, pretrained=tmp_path / f"resnet{DEPTHS[0]}-cifar10.pt")
    assert model.fc.out_features == 10
    # An ImageNet-style file is not a CIFAR one, and --out must be a folder.
    tv = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), tv)
    assert main(["experiment", "convert-cifar10", str(tv), "--out", str(tmp_path)]) == 2
    assert "tv.pth: not a CIFAR-10 ResNet file" in capsys.readouterr().err
    assert main(["experiment", "convert-cifar10", files[0], "--out", str(tv)]) == 2
    assert "--out " in capsys.readouterr().err
    # Named by the depth the file holds, not by its name; two files of one depth are refused before one overwrites.
    renamed = tmp_path / "resnet20.th"
    renamed.write_bytes(Path(files[-1]).read_bytes())
    assert main(["experiment", "convert-cifar10", str(renamed), "--out", str(tmp_path / "r")]) == 0
    assert [p.name for p in (tmp_path / "r").iterdir()] == [f"resnet{DEPTHS[-1]}-cifar10.pt"]
    assert main(["experiment", "convert-cifar10", files[-1], str(renamed), "--out", str(tmp_path / "two")]) == 2
    assert f"are both resnet{DEPTHS[-1]}" in capsys.readouterr().err

    for ckpt in converted:
        assert main(["predict", str(ckpt), str(images / "chelsea.png"), str(images / "rocket.jpg"), "--json"]) == 0
        results = json.loads(capsys.readouterr().out)
        by_name = {Path(r["path"]).name: r["predictions"] for r in results}
        assert by_name["chelsea.png"][0]["label"] == "cat", ckpt.name  # a tabby cat
        assert by_name["rocket.jpg"][0]["label"] in {"airplane", "ship", "automobile", "truck"}, ckpt.name

    # The Python API in full precision agrees with the reference network on a real photo.
    clf = load(converted[0], amp="off")
    x = clf.transform(_open_image(images / "chelsea.png"))[None]
    ref = _reference(Path(files[0]), DEPTHS[0])
    with torch.no_grad():
        torch.testing.assert_close(clf.predict_logits(x), ref(x), atol=1e-5, rtol=1e-5)


def _open_image(path: Path):
    from resnetlab.data.images import open_image

    return open_image(path)


def test_a_file_for_another_depth_names_it(shared):
    from resnetlab.errors import ResnetlabError

    with pytest.raises(ResnetlabError, match=r"they fit resnet56, plain56: pass --model resnet56$"):
        create_model("resnet20", pretrained=_weights(shared, 56))
