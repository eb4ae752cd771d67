"""The reference (original-equivalent) training pipeline, poster.reference: the evaluation
transform plus exactly the augmentations the config asks for, and the cached fast path's pixels
are its pixels on the 112 grid the model reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from poster.data.transforms import EvalTransform, load_image
from poster.meta import InputConfig
from poster.reference import ReferenceTrainDataset
from poster.train.augment import AugmentConfig
from poster.train.cache import augment_cached, build_uint8_cache
from poster.train.recipes import get_recipe

DATA = Path(__file__).resolve().parent / "data"
NO_AUG = dict(hflip_p=0.0, erasing_p=0.0, flip_or_noise=False)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """The three golden JPEGs (odd sizes are covered by tests/test_cache.py)."""
    d = tmp_path_factory.mktemp("reference_images")
    with np.load(DATA / "preprocess.npz") as z:
        paths = [d / f"golden_{i}.jpg" for i in range(3)]
        for i, p in enumerate(paths):
            p.write_bytes(z[f"jpeg_{i}"].tobytes())
    return [(str(p), i) for i, p in enumerate(paths)]


def _eval(records, order):
    tf = EvalTransform(InputConfig(channel_order=order))
    return torch.stack([tf(load_image(p, order)) for p, _ in records])


def _reference(records, config):
    ds = ReferenceTrainDataset(records, config)
    xs, labels = zip(*(ds[i] for i in range(len(ds))))
    assert list(labels) == [label for _, label in records]
    return torch.stack(xs)


@pytest.mark.parametrize("order", ["BGR", "RGB"])
def test_without_augmentation_it_is_the_eval_transform_and_the_cache(records, order):
    x = _reference(records, AugmentConfig(**NO_AUG, channel_order=order, input_order=order))
    assert torch.equal(x, _eval(records, order))
    cache = build_uint8_cache(records, order, workers=1)
    cached = augment_cached(cache.data, range(len(cache)), AugmentConfig(**NO_AUG, channel_order=order), train=False)
    assert torch.equal(cached, x[:, :, ::2, ::2])


def test_flip_is_exact(records):
    x = _reference(records, AugmentConfig(hflip_p=1.0, erasing_p=0.0, channel_order="BGR", input_order="BGR"))
    assert torch.equal(x, _eval(records, "BGR").flip(-1))


def test_erasing_zeroes_one_rectangle_and_keeps_the_rest(records):
    torch.manual_seed(0)
    x = _reference(records * 4, AugmentConfig(hflip_p=0.0, erasing_p=1.0, erasing_scale=(0.05, 0.05)))
    plain = _eval(records * 4, "RGB")
    for erased, ref in zip(x, plain):
        changed = (erased != ref).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        box = erased[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert (box == 0).all()  # one rectangle, 0 in normalised units
        assert abs(box[0].numel() / (224 * 224) - 0.05) < 0.01


def test_flip_or_noise_changes_half_the_images(records):
    torch.manual_seed(0)
    many = records * 40
    x = _reference(many, AugmentConfig(flip_or_noise=True, hflip_p=0.0, erasing_p=0.0))
    plain = _eval(many, "RGB")
    same = (x == plain).flatten(1).all(1)
    flipped = (x == plain.flip(-1)).flatten(1).all(1)
    assert 0.35 < same.float().mean().item() < 0.65
    assert 0.1 < flipped.float().mean().item() < 0.4 and not (same & flipped).any()


def test_recipe_config_takes_the_recipe_fields():
    recipe = get_recipe("v1_rafdb")
    config = AugmentConfig.from_recipe(recipe, input_order=recipe.channel_order)
    for name in ("flip_or_noise", "hflip_p", "erasing_p", "erasing_scale", "erasing_ratio", "channel_order",
                 "grayscale"):
        assert getattr(config, name) == getattr(recipe, name), name
    assert config.input_order == "BGR"
