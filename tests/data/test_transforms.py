from __future__ import annotations

import pytest
import torch
from PIL import Image

from resnetlab.data.transforms import MixupCutmix, build_transform, eval_transform_from_cfg
from resnetlab.errors import ResnetlabError

CFG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 0.8}


def test_eval_keeps_aspect_and_normalises():
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    tf = eval_transform_from_cfg(CFG)
    assert tf.decode_size == 40
    x = tf(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(32, 32)) and torch.allclose(x[1], -torch.ones(32, 32))


def test_train_presets():
    image = Image.new("RGB", (50, 60), (10, 120, 200))
    for aug in ({}, {"auto_augment": "rand"}, {"auto_augment": "trivial", "re_prob": 1.0, "rotation": 10}):
        tf = build_transform("train", 24, CFG["mean"], CFG["std"], color_jitter=0.3, vflip=0.5, **aug)
        assert tf(image).shape == (3, 24, 24)
    with pytest.raises(ResnetlabError, match="unknown"):
        build_transform("train", 24, CFG["mean"], CFG["std"], bogus=1)
    with pytest.raises(ResnetlabError):
        build_transform("train", 24, CFG["mean"], CFG["std"], auto_augment="nope")


def test_mixup_cutmix_soft_targets():
    images, labels = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, targets = MixupCutmix(3, mixup_alpha=0.8, cutmix_alpha=1.0)(images, labels)
    assert mixed.shape == images.shape and targets.shape == (6, 3)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    _, plain = MixupCutmix(3, mixup_alpha=0.2, cutmix_alpha=0.0, prob=0.0)(images, labels)
    assert torch.equal(plain.argmax(1), labels)


def test_uint8_preset_plus_batch_normalize_equals_per_image_normalisation():
    from resnetlab.data.transforms import BatchNormalize

    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (48, 80, 3), dtype=torch.uint8, generator=gen)
    image = Image.fromarray(pixels.numpy())
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    full = build_transform("eval", 32, mean, std)
    raw = build_transform("eval", 32, mean, std, normalize=False)
    assert (raw.mean, raw.std) == (mean, std)
    u8 = raw(image)
    assert u8.dtype == torch.uint8 and u8.shape == (3, 32, 32)
    batch = torch.stack([u8, u8.flip(-1)])  # (2, 3, 32, 32)
    out = BatchNormalize(mean, std)(batch)
    assert out.dtype == torch.float32
    assert torch.allclose(out[0], full(image), atol=1e-5)
    assert torch.allclose(out[1], full(image).flip(-1), atol=1e-5)
    # channels_last input stays channels_last; float input passes through untouched.
    cl = BatchNormalize(mean, std)(batch.contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, out)
    assert BatchNormalize(mean, std)(out) is out


def test_uint8_random_erasing_fills_the_mean_colour():
    mean = (0.5, 0.25, 0.75)
    tf = build_transform("train", 24, mean, (0.2, 0.2, 0.2), normalize=False, re_prob=1.0, hflip=0.0)
    x = tf(Image.new("RGB", (40, 40), (0, 0, 0)))
    assert x.dtype == torch.uint8
    erased = (x != 0).any(0)  # the image is black: erased pixels are the only non-zero ones
    assert erased.any()
    assert x[:, erased].float().mean(1).tolist() == [128.0, 64.0, 191.0]
