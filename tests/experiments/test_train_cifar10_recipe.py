"""`resnetlab train cifar10 --model resnet20` picks the paper's recipe; the user's flags and YAML still win."""

from __future__ import annotations

import tarfile

from resnetlab.cli import build_parser
from resnetlab.commands.train import resolve_config
from resnetlab.data import cifar10


def _resolve(argv: list[str]):
    return resolve_config(build_parser().parse_args(["train", *argv]))


def _cache_with_cifar(cifar_tarball, tmp_path, monkeypatch) -> None:
    path, _ = cifar_tarball
    monkeypatch.setenv(cifar10.CACHE_ENV, str(tmp_path))
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "cifar10", filter="data")


def test_cifar_resnet_on_cifar10_gets_the_paper_recipe(cifar_tarball, tmp_path, monkeypatch):
    _cache_with_cifar(cifar_tarball, tmp_path, monkeypatch)
    cfg = _resolve(["cifar10", "--model", "resnet20"])
    assert (cfg.opt, cfg.lr, cfg.wd, cfg.momentum, cfg.sched) == ("sgd", 0.1, 1e-4, 0.9, "multistep")
    assert cfg.augment == "cifar" and cfg.val_fraction == 0.1
    assert cfg.data == str(tmp_path / "cifar10" / "images")


def test_flags_and_yaml_override_the_recipe(cifar_tarball, tmp_path, monkeypatch):
    _cache_with_cifar(cifar_tarball, tmp_path, monkeypatch)
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text("wd: 0.0005\nepochs: 3\n")
    cfg = _resolve(["cifar10", "--model", "plain20", "--lr", "0.05", "--config", str(yaml_file)])
    assert (cfg.opt, cfg.lr, cfg.wd, cfg.epochs) == ("sgd", 0.05, 0.0005, 3)


def test_other_models_and_folders_keep_the_defaults(cifar_tarball, tmp_path, monkeypatch):
    _cache_with_cifar(cifar_tarball, tmp_path, monkeypatch)
    default_opt = _resolve([str(tmp_path), "--model", "resnet20"]).opt
    assert _resolve(["cifar10", "--model", "resnet18"]).opt == default_opt != "sgd"


def test_an_imagenet_model_on_cifar10_is_told_the_photos_are_32_px(cifar_tarball, tmp_path, monkeypatch, caplog):
    import logging

    _cache_with_cifar(cifar_tarball, tmp_path, monkeypatch)
    with caplog.at_level(logging.WARNING):
        _resolve(["cifar10", "--model", "resnet18"])
    assert any("photos are 32 px; resnet18 trains at its default 224 px" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _resolve(["cifar10", "--model", "resnet18", "--img-size", "32"])
        _resolve(["cifar10", "--model", "resnet20"])
    assert not [r for r in caplog.records if "32 px" in r.getMessage()]


def test_data_check_and_eval_take_the_dataset_name(cifar_tarball, tmp_path, monkeypatch, capsys):
    from resnetlab.cli import main

    _cache_with_cifar(cifar_tarball, tmp_path, monkeypatch)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no folder named cifar10 here
    assert main(["data", "check", "cifar10"]) == 0
    assert f"data: {tmp_path / 'cifar10' / 'images'}" in capsys.readouterr().out
