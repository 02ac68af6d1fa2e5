from __future__ import annotations

import logging

import pytest
import torch

from resnetlab.data import loader as loader_mod
from resnetlab.data.folder import make_splits
from resnetlab.data.loader import ImageDataset, build_loader, parse_bytes, resized_shape
from resnetlab.data.transforms import build_transform
from resnetlab.errors import ResnetlabError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture
def samples_of(tmp_path, make_class_tree):
    def make(n: int = 6):
        root = make_class_tree(tmp_path / "ds", {"a": n // 2, "b": n - n // 2}, size=(64, 48))
        return make_splits(root, val_fraction=0.0).train

    return make


def test_resized_shape():
    assert resized_shape(400, 300, 150) == (200, 150)
    assert resized_shape(300, 400, 150) == (150, 200)
    assert resized_shape(100, 80, 150) == (100, 80)  # never upscaled


def test_cache_second_pass_decodes_nothing(tmp_path, monkeypatch, samples_of):
    samples = samples_of()
    calls = []
    real_open = loader_mod.open_image
    monkeypatch.setattr(loader_mod, "open_image", lambda *a, **k: calls.append(a[0]) or real_open(*a, **k))
    tf = build_transform("eval", 32, MEAN, STD)
    ds = ImageDataset(samples, tf, cache="ram")
    assert ds.cache.shapes[0] == (48, 36)  # short side = floor(32 / 0.875) = 36
    loader = build_loader(ds, batch_size=4, shuffle=True, num_workers=0)
    first = torch.cat([x for x, _ in loader])
    assert len(calls) == len(samples) and ds.cache.complete
    second = torch.cat([x for x, _ in loader])
    assert len(calls) == len(samples)  # nothing decoded again
    assert first.shape == second.shape == (len(samples), 3, 32, 32)
    # Cached and uncached eval give the same pixels (same resize, then a no-op Resize in the transform).
    plain = ImageDataset(samples, tf)
    assert torch.allclose(plain[0][0], ds[0][0])


def test_cache_filled_by_workers_is_shared(tmp_path, samples_of):
    ds = ImageDataset(samples_of(8), build_transform("train", 32, MEAN, STD), cache="ram")
    assert ds.cache.shared
    loader = build_loader(ds, batch_size=4, shuffle=True, num_workers=2)
    assert sum(len(y) for _, y in loader) == 8
    assert ds.cache.complete and ds.decode_count == 0  # workers decoded; the main process sees it all
    assert sum(len(y) for _, y in loader) == 8


def test_the_default_cache_budget_is_shared_by_the_processes_of_one_machine(monkeypatch):
    from resnetlab.data import loader

    monkeypatch.delenv("RESNETLAB_CACHE_BUDGET", raising=False)
    monkeypatch.setattr(loader, "available_memory", lambda: 8 << 30)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader.cache_budget() == 4 << 30
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc-per-node 4: each caches the whole dataset
    assert loader.cache_budget() == 1 << 30
    assert loader.cache_budget("2G") == 2 << 30  # an explicit budget is per process


def test_cache_budget_refusal(tmp_path, samples_of):
    with pytest.raises(ResnetlabError, match="budget"):
        ImageDataset(samples_of(), build_transform("eval", 32, MEAN, STD), cache="ram", cache_budget_bytes=100)
    assert parse_bytes("2K") == 2048 and parse_bytes("1.5G") == int(1.5 * 2**30)


@pytest.mark.parametrize("cache", [None, "ram"])
def test_corrupt_file_mid_epoch_is_replaced(tmp_path, caplog, cache, make_image, samples_of):
    samples = samples_of()
    good = make_image(tmp_path / "later_broken.jpg", size=(64, 48))
    data = good.read_bytes()
    samples.insert(2, (good, 0))
    ds = ImageDataset(samples, build_transform("eval", 32, MEAN, STD), cache=cache)
    good.write_bytes(data[: len(data) // 3])  # truncated after the split was made
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            n = sum(len(y) for _, y in build_loader(ds, batch_size=3, shuffle=False, num_workers=0))
            assert n == len(samples)
    warnings = [r for r in caplog.records if "later_broken.jpg" in r.getMessage()]
    assert len(warnings) == 1 and bool(ds.bad[2])


def test_corrupt_file_with_workers(tmp_path, samples_of):
    samples = samples_of()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xffnot really")
    samples.append((bad, 1))
    ds = ImageDataset(samples, build_transform("eval", 32, MEAN, STD))
    n = sum(len(y) for _, y in build_loader(ds, batch_size=2, shuffle=True, num_workers=2))
    assert n == len(samples) and bool(ds.bad[-1])


def test_validation_leaves_an_unreadable_image_out(tmp_path, caplog, samples_of):
    # Training replaces a bad image by the next; validation must not: that would count one image twice and drop the
    # bad image's class. The batch that held only the bad image disappears.
    from resnetlab.data.loader import DeviceLoader
    from resnetlab.data.transforms import BatchNormalize

    samples = samples_of(4)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xffnot really")
    samples.insert(1, (bad, 7))
    ds = ImageDataset(samples, build_transform("eval", 32, MEAN, STD), cache="ram", substitute=False)
    with caplog.at_level(logging.WARNING):
        batches = list(DeviceLoader(build_loader(ds, 1, shuffle=False, num_workers=0), BatchNormalize(MEAN, STD)))
    labels = torch.cat([y for _, y in batches]).tolist()
    assert labels == [label for _, label in samples if label != 7]
    assert any("bad.jpg" in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)


def test_loader_seeded_order(tmp_path, samples_of):
    ds = ImageDataset(samples_of(8), build_transform("eval", 32, MEAN, STD))

    def order(seed):
        return torch.cat([y for _, y in build_loader(ds, 2, shuffle=True, num_workers=0, seed=seed)]).tolist()

    assert order(3) == order(3)
    loader = build_loader(ds, 2, shuffle=False, num_workers=1, device_type="cpu")
    assert loader.persistent_workers and not loader.pin_memory


@pytest.mark.parametrize("workers", [0, 2])
def test_uint8_batches_arrive_normalised_and_channels_last(samples_of, workers):
    from resnetlab.data.loader import DeviceLoader
    from resnetlab.data.transforms import BatchNormalize

    samples = samples_of(6)
    floats = ImageDataset(samples, build_transform("eval", 32, MEAN, STD))
    raw = ImageDataset(samples, build_transform("eval", 32, MEAN, STD, normalize=False), cache="ram")
    loader = build_loader(raw, batch_size=4, shuffle=False, num_workers=workers)
    images, labels = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    assert images.is_contiguous(memory_format=torch.channels_last)  # stacked (B, H, W, C): no transposing copy
    device_loader = DeviceLoader(loader, BatchNormalize(MEAN, STD))
    assert len(device_loader) == 2 and device_loader.dataset is raw  # the wrapped loader's attributes
    got = torch.cat([x for x, _ in device_loader])
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last)
    want = torch.stack([floats[i][0] for i in range(6)])
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.cat([y for _, y in device_loader]).tolist() == [label for _, label in samples]


def test_deterministic_uint8_transform_caches_its_output(samples_of):
    samples = samples_of(6)
    tf = build_transform("eval", 32, MEAN, STD, normalize=False)
    ds = ImageDataset(samples, tf, cache="ram")
    assert set(ds.cache.shapes) == {(32, 32)}  # the crop itself, not the 36 px short side decode
    first = torch.cat([x for x, _ in build_loader(ds, batch_size=4, shuffle=False, num_workers=0)])
    assert ds.decode_count == 6 and ds.cache.complete
    second = torch.cat([x for x, _ in build_loader(ds, batch_size=4, shuffle=False, num_workers=0)])
    assert ds.decode_count == 6 and torch.equal(first, second)
    uncached = torch.stack([ImageDataset(samples, tf)[i][0] for i in range(6)])
    assert torch.equal(first, uncached)  # the same pixels as transforming each decoded image


@pytest.mark.parametrize("workers", [1, 2])
def test_warm_cache_fills_in_parallel_and_skips_bad_files(tmp_path, samples_of, workers):
    samples = samples_of(40)  # enough images for two filling processes
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xffnot really")
    samples.insert(5, (bad, 0))
    ds = ImageDataset(samples, build_transform("eval", 32, MEAN, STD, normalize=False), cache="ram")
    good = len(samples) - 1  # the bad file already failed the header scan: never queued for decoding
    assert ds.warm_cache(workers) == good
    assert ds.cache.complete
    assert ds.decode_count == (good if workers == 1 else 0)  # threads here, or other processes
    assert ds.warm_cache(workers) == 0  # nothing left to decode
    loader = build_loader(ds, batch_size=8, shuffle=False)
    assert loader.num_workers == 0  # a complete cache of final crops needs no workers
    assert sum(len(y) for _, y in loader) == len(samples)  # the bad one replaced by a neighbour, reported once
    assert bool(ds.bad[5]) and ds.decode_count == (good if workers == 1 else 0)


def test_cpu_training_from_a_full_cache_uses_no_workers(samples_of):
    # A CPU training the model has no core to spare for worker processes once every image is decoded in RAM;
    # a GPU run keeps its workers for the random crops.
    train_tf = build_transform("train", 32, MEAN, STD, normalize=False, scale=(0.25, 1.0))
    ds = ImageDataset(samples_of(6), train_tf, cache="ram")
    expected = loader_mod.default_workers()
    assert loader_mod.auto_num_workers(ds, "cpu") == expected  # nothing decoded yet
    ds.warm_cache(1)
    assert loader_mod.auto_num_workers(ds, "cpu") == 0
    assert loader_mod.auto_num_workers(ds, "cuda") == expected
    assert loader_mod.auto_num_workers(ImageDataset(samples_of(6), train_tf), "cpu") == expected  # decoded every epoch


@pytest.mark.parametrize(("asked", "expected"), [(None, None), (0, 0), (2, 2), (999, 2)])
def test_workers_are_capped_at_the_usable_cpus(monkeypatch, caplog, asked, expected):
    # `--workers 999` on 2 cores started ~1,000 processes; a count the CPUs can run is kept as asked.
    monkeypatch.setattr(loader_mod.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    with caplog.at_level(logging.WARNING, logger=loader_mod.__name__):
        assert loader_mod.cap_workers(asked) == expected
    warned = [r.getMessage() for r in caplog.records]
    assert warned == (["warning: --workers 999: this process may use 2 CPUs; using 2 workers"] if asked == 999 else [])
