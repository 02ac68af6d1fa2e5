"""Pretrained weights: downloads from a local HTTP server, local files of every accepted kind, the CIFAR converter."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from resnetlab.engine.checkpoint import save_checkpoint
from resnetlab.errors import ResnetlabError
from resnetlab.models import create_model, list_models
from resnetlab.models import weights as W

CIFAR_FILES = ("resnet20-12fca82f.th", "resnet32-d509ac18.th", "resnet44-014dd654.th", "resnet56-4bfd9763.th")


# ------------------------------------------------------------------------------------------------------ helpers


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], keys=None) -> None:
    keys = list(expected) if keys is None else keys
    assert keys
    for k in keys:
        assert actual[k].shape == expected[k].shape, k
        assert torch.equal(actual[k], expected[k]), k


@pytest.fixture(scope="module")
def tv_resnet18() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision ResNet-18 state dict (BN stats perturbed so buffers are checked too)."""
    torch.manual_seed(1)
    model = torchvision.models.resnet18()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


@pytest.fixture(scope="module")
def hashed_file(tmp_path_factory, tv_resnet18) -> Path:
    """`resnet18-<sha8>.pth` named like torchvision's files, with its real sha256 prefix."""
    folder = tmp_path_factory.mktemp("srv")
    tmp = folder / "resnet18.pth"
    torch.save(tv_resnet18, tmp)
    path = folder / f"resnet18-{_sha256(tmp)[:8]}.pth"
    tmp.rename(path)
    return path


class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder; `/truncated/<file>` promises the full Content-Length, sends half, and hangs up."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests.append(self.path)
        if self.path.startswith("/truncated/"):
            body = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(hashed_file, tmp_path, monkeypatch):
    """A 127.0.0.1 HTTP server for `hashed_file`'s folder; TORCH_HOME in tmp_path; base URL pointed at the server."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(hashed_file.parent)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv(W.WEIGHTS_URL_ENV, f"http://127.0.0.1:{httpd.server_address[1]}/")
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _serve_as(monkeypatch, arch: str, file_name: str) -> Path:
    """Point the table entry for `arch` at `file_name`; returns where the download should land."""
    monkeypatch.setitem(W.IMAGENET_WEIGHTS, arch, dataclasses.replace(W.IMAGENET_WEIGHTS[arch], file=file_name))
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _cache_files() -> list[Path]:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return sorted(folder.iterdir()) if folder.is_dir() else []


# -------------------------------------------------------------------------------------------------- the table


def test_table_has_torchvision_default_urls(monkeypatch):
    monkeypatch.delenv(W.WEIGHTS_URL_ENV, raising=False)
    registered = set(list_models())
    for arch, src in W.IMAGENET_WEIGHTS.items():
        assert arch in registered
        tv = torchvision.models.get_model_weights(arch).DEFAULT
        assert src.url() == tv.url
        assert src.tag == tv.name
        assert tv.url.endswith(f"-{src.sha256_prefix}.pth")
        # crop_pct travels with the weights: torchvision evaluates at resize R, centre crop 224.
        t = tv.transforms()
        assert src.cfg["crop_pct"] == pytest.approx(t.crop_size[0] / t.resize_size[0])
    assert {"resnet18", "resnet50", "googlenet", "mobilenet_v2", "wide_resnet101_2"} <= set(W.IMAGENET_WEIGHTS)


def test_hash_prefix_from_name():
    assert W.hash_prefix_from_name("resnet18-f37072fd.pth") == "f37072fd"
    assert W.hash_prefix_from_name("/x/resnet20-12fca82f.th") == "12fca82f"
    assert W.hash_prefix_from_name("model.pth") is None


# --------------------------------------------------------------------------------------------------- download


def test_download_hash_match_loads_source_tensors(server, hashed_file, tv_resnet18, monkeypatch):
    dst = _serve_as(monkeypatch, "resnet18", hashed_file.name)
    model = create_model("resnet18", pretrained="imagenet")
    assert dst.is_file() and _sha256(dst) == _sha256(hashed_file)
    assert str(dst).startswith(str(Path(torch.hub.get_dir())))  # under TORCH_HOME
    _assert_same_tensors(model.state_dict(), tv_resnet18)
    assert model.default_cfg["crop_pct"] == W.IMAGENET_WEIGHTS["resnet18"].cfg["crop_pct"]
    assert model.default_cfg["classifier"] == "fc"
    assert server.requests == [f"/{hashed_file.name}"]

    # Second use reads the verified cache without touching the network.
    create_model("resnet18", pretrained="imagenet")
    assert len(server.requests) == 1
    assert [p.name for p in _cache_files()] == [hashed_file.name]


def test_download_hash_mismatch_deletes_file(server, hashed_file, monkeypatch):
    wrong = "resnet18-00000000.pth"
    shutil.copy(hashed_file, hashed_file.parent / wrong)
    _serve_as(monkeypatch, "resnet18", wrong)
    with pytest.raises(ResnetlabError, match="sha256 starts with .*expected 00000000") as exc:
        create_model("resnet18", pretrained="imagenet")
    assert "--pretrained PATH" in str(exc.value)
    assert _cache_files() == []  # neither the bad file nor a partial one is left behind


def test_download_404_names_url_and_local_alternative(server, monkeypatch):
    _serve_as(monkeypatch, "resnet18", "resnet18-deadbeef.pth")
    with pytest.raises(ResnetlabError) as exc:
        create_model("resnet18", pretrained="imagenet")
    msg = str(exc.value)
    assert f"127.0.0.1:{server.server_address[1]}/resnet18-deadbeef.pth" in msg
    assert "404" in msg and "--pretrained PATH" in msg
    assert _cache_files() == []


def test_download_truncated(server, hashed_file, monkeypatch):
    monkeypatch.setenv(W.WEIGHTS_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}/truncated")
    _serve_as(monkeypatch, "resnet18", hashed_file.name)
    with pytest.raises(ResnetlabError, match="could not download resnet18 .*truncated/resnet18-") as exc:
        create_model("resnet18", pretrained="imagenet")
    assert "--pretrained PATH" in str(exc.value)
    assert server.requests == [f"/truncated/{hashed_file.name}"]
    assert _cache_files() == []


def test_download_offline(tmp_path, monkeypatch):
    # Nothing listens on port 1: the same failure as a machine without network.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv(W.WEIGHTS_URL_ENV, "http://127.0.0.1:1/")
    with pytest.raises(ResnetlabError, match=r"http://127.0.0.1:1/mobilenet_v2-7ebf99e0.pth .*--pretrained PATH"):
        create_model("mobilenet_v2", pretrained="imagenet")


def test_a_cache_folder_that_cannot_be_written_is_not_called_a_download_failure(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TORCH_HOME", str(blocker / "torch"))  # under a file: the folder cannot be made
    monkeypatch.setenv(W.WEIGHTS_URL_ENV, "http://127.0.0.1:1/")  # never asked
    with pytest.raises(ResnetlabError) as exc:
        create_model("mobilenet_v2", pretrained="imagenet")
    message = str(exc.value)
    assert message.startswith(f"cannot write {blocker / 'torch'}") and "set TORCH_HOME to a folder" in message
    assert "could not download" not in message


def test_imagenet_for_arch_without_weights():
    with pytest.raises(ResnetlabError, match="no ImageNet weights for 'resnet20'.*--pretrained PATH"):
        create_model("resnet20", num_classes=10, pretrained="imagenet")


# ------------------------------------------------------------------------------------------------ local files


def test_local_pth_with_wrapper_and_module_prefix(tmp_path, tv_resnet18):
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv_resnet18.items()}, "epoch": 3}, path)
    model = create_model("resnet18", pretrained=str(path))
    _assert_same_tensors(model.state_dict(), tv_resnet18)


def test_local_safetensors(tmp_path, tv_resnet18):
    from safetensors.torch import save_file

    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in tv_resnet18.items()}, path)
    model = create_model("resnet18", pretrained=path)
    _assert_same_tensors(model.state_dict(), tv_resnet18)


def test_resnetlab_checkpoint_brings_its_default_cfg(tmp_path):
    source = create_model("resnet18", num_classes=6)
    cfg = {**source.default_cfg, "input_size": (3, 160, 160), "crop_pct": 0.9}
    path = save_checkpoint(
        tmp_path / "best.pt",
        {"arch": "resnet18", "num_classes": 6, "classes": list("abcdef"), "model": source.state_dict(),
         "default_cfg": cfg, "head": None},
    )  # fmt: skip
    model = create_model("resnet18", num_classes=6, pretrained=path)
    _assert_same_tensors(model.state_dict(), source.state_dict())
    assert model.default_cfg["input_size"] == (3, 160, 160) and model.default_cfg["crop_pct"] == 0.9
    from_run_folder = create_model("resnet18", num_classes=6, pretrained=tmp_path)  # its best.pt
    _assert_same_tensors(from_run_folder.state_dict(), source.state_dict())

    with pytest.raises(ResnetlabError, match="checkpoint is a resnet18, not a resnet34"):
        create_model("resnet34", num_classes=6, pretrained=path)


def test_other_num_classes_replaces_head_and_reports(tmp_path, tv_resnet18, caplog):
    path = tmp_path / "tv.pth"
    torch.save(tv_resnet18, path)
    caplog.set_level(logging.WARNING, logger=W.__name__)
    model = create_model("resnet18", num_classes=5)
    fresh_fc = model.fc.weight.detach().clone()
    result = W.load_pretrained(model, "resnet18", path, num_classes=5)
    assert sorted(result.skipped) == ["fc.bias", "fc.weight"]
    assert "fc.weight" in caplog.text and "fc.bias" in caplog.text
    assert model.fc.weight.shape == (5, 512) and torch.equal(model.fc.weight, fresh_fc)
    backbone = [k for k in tv_resnet18 if not k.startswith("fc.")]
    _assert_same_tensors(model.state_dict(), tv_resnet18, backbone)


def _googlenet_from_torchvision(tmp_path, aux_logits: bool, num_classes: int):
    """(torchvision's state dict, our GoogLeNet loaded from it, the LoadResult)."""
    tv = torchvision.models.googlenet(aux_logits=aux_logits, init_weights=False).state_dict()
    path = tmp_path / f"googlenet-aux{int(aux_logits)}.pth"
    torch.save(tv, path)
    model = create_model("googlenet", num_classes=num_classes)
    return tv, model, W.load_pretrained(model, "googlenet", path, num_classes=num_classes)


def test_googlenet_heads_and_aux_heads_replaced(tmp_path):
    tv, model, result = _googlenet_from_torchvision(tmp_path, aux_logits=True, num_classes=7)
    assert sorted(result.skipped) == sorted(k for k in tv if k.startswith(("fc.", "aux1.fc2.", "aux2.fc2.")))
    kept = [k for k in tv if k not in result.skipped]
    _assert_same_tensors(model.state_dict(), tv, kept)

    # A model built without aux heads drops them from the file, as torchvision does.
    no_aux = create_model("googlenet", num_classes=1000, aux_logits=False)
    result = W.load_pretrained(no_aux, "googlenet", tmp_path / "googlenet-aux1.pth", num_classes=1000)
    assert result.skipped and all(k.startswith(("aux1.", "aux2.")) for k in result.skipped)


def test_googlenet_file_without_aux_heads_trains_them_fresh(tmp_path):
    # torchvision's pretrained GoogLeNet state dict has no aux1/aux2 (it deletes them); ours start those fresh.
    tv, model, result = _googlenet_from_torchvision(tmp_path, aux_logits=False, num_classes=6)
    assert result.fresh == ["aux1", "aux2"] and model.aux1 is not None
    _assert_same_tensors(model.state_dict(), tv, [k for k in tv if not k.startswith("fc.")])


def test_the_imagenet_file_passed_by_path_gets_its_preprocessing(tmp_path, monkeypatch):
    # Offline users fetch googlenet-<hash>.pth by hand and pass it: it needs transform_input=True, as when downloaded.
    monkeypatch.setitem(
        W.IMAGENET_WEIGHTS, "googlenet", dataclasses.replace(W.IMAGENET_WEIGHTS["googlenet"], file="googlenet-in1k.pth")
    )
    tv = torchvision.models.googlenet(transform_input=True, aux_logits=False, init_weights=True).eval()
    torch.save(tv.state_dict(), tmp_path / "googlenet-in1k.pth")
    model = create_model("googlenet", pretrained=tmp_path / "googlenet-in1k.pth", aux_logits=False).eval()
    assert model.transform_input and model.default_cfg["crop_pct"] == W.IMAGENET_WEIGHTS["googlenet"].cfg["crop_pct"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))
    torch.save(tv.state_dict(), tmp_path / "other-name.pth")  # another name: the file is not recognised
    assert not create_model("googlenet", pretrained=tmp_path / "other-name.pth", aux_logits=False).transform_input


def test_a_headless_model_drops_the_files_classifier(tmp_path, tv_resnet18):
    # timm's feature-extractor pattern: create_model(name, num_classes=0, pretrained=...).
    path = tmp_path / "tv.pth"
    torch.save(tv_resnet18, path)
    model = create_model("resnet18", num_classes=0, pretrained=path).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 512)
    _assert_same_tensors(model.state_dict(), tv_resnet18, [k for k in tv_resnet18 if not k.startswith("fc.")])


def test_grey_input_sums_rgb_stem(tmp_path, tv_resnet18):
    path = tmp_path / "tv.pth"
    torch.save(tv_resnet18, path)
    model = create_model("resnet18", in_chans=1, pretrained=path)
    assert torch.allclose(model.conv1.weight, tv_resnet18["conv1.weight"].sum(1, keepdim=True))


def test_wrong_architecture_names_the_keys(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(
        ResnetlabError, match=r"r34.pth: weights do not fit .*unexpected: layer1\.2\.conv1\.weight"
    ) as err:
        create_model("resnet18", pretrained=path)
    assert str(err.value).endswith("; they fit resnet34: pass --model resnet34")  # which model the file is for


def test_a_googlenet_file_without_aux_heads_is_named_for_googlenet(tmp_path):
    # torchvision's ImageNet GoogLeNet file has no aux heads; compared with them, it fitted no model at all.
    path = tmp_path / "g.pth"
    state = torchvision.models.googlenet(weights=None, init_weights=True).state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("aux")}, path)
    with pytest.raises(ResnetlabError) as err:
        create_model("resnet18", pretrained=path)
    assert str(err.value).endswith("; they fit googlenet: pass --model googlenet")


class _Shell:
    def __reduce__(self):
        return (os.system, ("echo unpickled",))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("junk.pth", b"not a torch file", "not a readable weights file .not a PyTorch file: neither a torch.save"),
        ("empty.pt", b"", "not a readable weights file .empty or cut short: copy or download it again"),
        ("notes.pt", b"hello\n", "not a readable weights file .not a PyTorch file"),  # KeyError in the unpickler
        ("noise.pt", bytes(range(7, 107)), "not a readable weights file .not a PyTorch file"),
        ("history.pt", b"epoch,lr\n1,0.002\n", "not a readable weights file .not a PyTorch file"),  # IndexError
        ("torn.pt", "torn", "not a readable weights file .a torn or truncated torch.save file: copy or download it"),
        ("args.pt", "namespace", "not a readable weights file .it pickles argparse.Namespace, and resnetlab loads"),
        # A module torch blocks outright words its refusal differently from an unknown class.
        ("evil.pt", "system", "not a readable weights file .it pickles (posix|nt).system, and resnetlab loads tensors"),
        ("junk.safetensors", b"not safetensors", "not a readable safetensors file"),
    ],
)
def test_unreadable_file(tmp_path, name, content, message):
    import argparse

    path = tmp_path / name
    if content == "namespace":  # a training script's options saved beside the weights: pickled code to torch.load
        torch.save({"state_dict": torchvision.models.resnet18().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    elif content == "system":  # would run a shell command if unpickled
        torch.save({"state_dict": torchvision.models.resnet18().state_dict(), "hook": _Shell()}, path)
    elif content == "torn":
        torch.save(torchvision.models.resnet18().state_dict(), path)
        path.write_bytes(path.read_bytes()[:4096])
    else:
        path.write_bytes(content)
    with pytest.raises(ResnetlabError, match=f"{name}: {message}") as err:
        create_model("resnet18", pretrained=path)
    # One line, without torch's terminal escapes or its advice to load with weights_only=False (arbitrary code).
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value) and "weights_only" not in str(err.value)


def test_missing_file():
    with pytest.raises(ResnetlabError, match="no such file"):
        create_model("resnet18", pretrained="/nonexistent/weights.pth")


def test_file_without_state_dict(tmp_path):
    path = tmp_path / "dict.pth"
    torch.save({"epoch": 1, "note": "nothing"}, path)
    with pytest.raises(ResnetlabError, match="no state dict inside"):
        create_model("resnet18", pretrained=path)


# ------------------------------------------------------------------------------------------------------ CIFAR


def _cifar_expected(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The akamaster file's tensors under our names: no `module.`, `linear.` -> `fc.`."""
    out = {}
    for k, v in raw.items():
        k = k.removeprefix("module.")
        out["fc." + k.removeprefix("linear.") if k.startswith("linear.") else k] = v
    return out


@pytest.mark.parametrize("file_name", CIFAR_FILES)
def test_cifar_checkpoint_every_tensor_lands(shared, file_name):
    path = shared / "weights" / "cifar10-resnet" / file_name
    arch, prefix = path.stem.split("-")
    assert _sha256(path).startswith(prefix)

    model = create_model(arch, num_classes=10, pretrained=str(path))
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    expected = _cifar_expected(raw)
    state = model.state_dict()
    _assert_same_tensors(state, expected)
    # The file has every tensor the model holds except BatchNorm's counters, which the converter fills in.
    assert set(state) - set(expected) == {k for k in state if k.endswith("num_batches_tracked")}
    assert model.default_cfg["mean"] == W.IMAGENET_MEAN  # akamaster normalised CIFAR with ImageNet statistics


def test_cifar_models_see_a_cat(shared):
    """Real end-to-end check of converter and architecture: the tabby photo is class 3 ("cat") for all four nets."""
    image = Image.open(shared / "images" / "chelsea.png").convert("RGB").resize((32, 32), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    for file_name in CIFAR_FILES:
        model = create_model(
            file_name.split("-")[0], num_classes=10, pretrained=shared / "weights" / "cifar10-resnet" / file_name
        )
        mean, std = (torch.tensor(model.default_cfg[k]).view(3, 1, 1) for k in ("mean", "std"))
        with torch.no_grad():
            logits = model.eval()(((x - mean) / std)[None])
        assert logits.argmax(1).item() == 3, file_name


def test_cifar_wrong_hash_in_name_fails(shared, tmp_path):
    src = shared / "weights" / "cifar10-resnet" / CIFAR_FILES[0]
    bad = tmp_path / "resnet20-00000000.th"
    shutil.copy(src, bad)
    with pytest.raises(
        ResnetlabError, match="resnet20-00000000.th: sha256 starts with 12fca82f.*file name says 00000000"
    ):
        create_model("resnet20", num_classes=10, pretrained=bad)
    # A name that only looks like it has a hash (not <model>-<hex>) is not checked.
    plain = tmp_path / "run-20240101.th"
    shutil.copy(src, plain)
    create_model("resnet20", num_classes=10, pretrained=plain)
