"""Statistics and semantics of the batched training augmentation (small tensors, seconds)."""

from __future__ import annotations

import math

import pytest
import torch

from poster.meta import IMAGENET_MEAN, IMAGENET_STD
from poster.train.augment import (
    AugmentConfig,
    BatchAugment,
    flip_or_noise,
    normalize,
    random_erasing,
    random_hflip,
    sample_erasing_boxes,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ramp_u8(b, h=8, w=8, base=100):
    """Left-right asymmetric uint8 images, away from the clipping limits."""
    x = base + torch.arange(h * w, dtype=torch.int64).view(1, 1, h, w) % 64
    x = x + torch.arange(3).view(1, 3, 1, 1)
    return x.expand(b, 3, h, w).to(torch.uint8).contiguous()


def classify(out, x):
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    return same, flipped, ~same & ~flipped


# --------------------------------------------------------------------------- hflip
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_hflip_fraction_and_exactness(dtype):
    x = ramp_u8(4000).to(dtype)
    out = random_hflip(x, gen(1), p=0.5)
    same, flipped, other = classify(out, x)
    assert out.dtype == dtype and not other.any() and not (same & flipped).any()
    assert abs(flipped.float().mean().item() - 0.5) < 0.04
    assert torch.equal(random_hflip(x, gen(1), p=0.0), x)
    assert torch.equal(random_hflip(x, gen(1), p=1.0), x.flip(-1))


# --------------------------------------------------------------------------- flip-or-noise
def test_flip_or_noise_statistics_uint8():
    x = ramp_u8(4000)
    out = flip_or_noise(x, gen(2))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    same, flipped, noisy = classify(out, x)
    assert abs(same.float().mean().item() - 0.5) < 0.04
    assert abs(flipped.float().mean().item() - 0.25) < 0.03
    assert abs(noisy.float().mean().item() - 0.25) < 0.03
    # out = trunc(x + n) with integer x and no clipping here: diff = floor(n), mean -1/2,
    # variance 30 + 1/12 (floor = n - U(0,1) approximately).
    diff = out[noisy].to(torch.float64) - x[noisy].to(torch.float64)
    assert abs(diff.mean().item() + 0.5) < 0.05
    assert abs(diff.var().item() - (30.0 + 1.0 / 12.0)) < 0.6
    assert abs(math.sqrt(diff.var().item() - 1.0 / 12.0) - math.sqrt(30.0)) < 0.06


def test_flip_or_noise_clips_and_truncates():
    x = torch.zeros(500, 3, 4, 4, dtype=torch.uint8)
    x[:, :, :, 2:] = 255
    out = flip_or_noise(x, gen(3), p=1.0)
    # every sample is flipped or noisy; noise near 0/255 is clipped (many exact 0 and 255 stay)
    assert out.dtype == torch.uint8
    noisy = ~(out == x.flip(-1)).flatten(1).all(1)
    left, right = out[noisy][..., :2].double(), out[noisy][..., 2:]
    # 0 + n clipped and truncated stays 0 iff n < 1: P = Phi(1/sqrt(30)) = 0.5724
    assert abs((left == 0).double().mean().item() - 0.5724) < 0.03
    # 255 + n stays 255 iff n >= 0 (clipped above, truncation below)
    assert abs((right == 255).double().mean().item() - 0.5) < 0.03
    # E[floor(max(n, 0))] = sum_k P(n >= k) for k >= 1, about 1.93
    assert 1.7 < left.mean().item() < 2.2


def test_flip_or_noise_float_matches_uint8():
    x = ramp_u8(300)
    a = flip_or_noise(x, gen(4)).float() / 255
    b = flip_or_noise(x.float() / 255, gen(4))
    assert b.dtype == torch.float32
    close = (a - b).abs() < 1e-6
    assert close.float().mean() > 0.999  # differences only where float rounding crosses a level
    assert ((a - b).abs() <= 1 / 255 + 1e-6).all()


def test_flip_or_noise_determinism():
    x = ramp_u8(64)
    assert torch.equal(flip_or_noise(x, gen(5)), flip_or_noise(x, gen(5)))
    assert not torch.equal(flip_or_noise(x, gen(5)), flip_or_noise(x, gen(6)))
    assert torch.equal(flip_or_noise(x, gen(5), p=0.0), x)


# --------------------------------------------------------------------------- normalize
def test_normalize_uint8_float_and_channel_order():
    x = ramp_u8(2)
    want = (x.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(normalize(x.float() / 255), want, rtol=0, atol=1e-6)
    # an RGB batch fed to a BGR model: channel 0 becomes blue, normalised with mean[0]/std[0]
    bgr = normalize(x, input_order="RGB", channel_order="BGR")
    torch.testing.assert_close(bgr[:, 0], (x[:, 2].float() / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0])
    torch.testing.assert_close(normalize(x.flip(1), input_order="BGR", channel_order="BGR"), bgr)
    with pytest.raises(ValueError):
        normalize(x, channel_order="GBR")


# --------------------------------------------------------------------------- erasing
def _erase_area_bounds(h, w, lo, hi, hw):
    # area = h*w with h = round(a), w = round(b), a*b in [lo, hi]*HW  =>  |h*w - a*b| <= (h+w+1)/2 + 1/4
    slack = (h + w + 1).double() / 2 + 0.25
    area = (h * w).double()
    return (area >= lo * hw - slack) & (area <= hi * hw + slack)


@pytest.mark.parametrize("scale", [(0.02, 0.1), (0.05, 0.05)])
def test_erasing_box_geometry_at_224(scale):
    top, left, h, w, apply = sample_erasing_boxes(20000, 224, 224, gen(7), p=1.0, scale=scale)
    assert apply.all()  # at 224 every draw fits
    assert ((top >= 0) & (left >= 0) & (top + h <= 224) & (left + w <= 224)).all()
    assert _erase_area_bounds(h, w, *scale, 224 * 224).all()
    frac = (h * w).double() / 224**2
    assert abs(frac.mean().item() - sum(scale) / 2) < 0.003
    logr = torch.log(h.double() / w.double())
    assert logr.min() > math.log(0.3) - 0.05 and logr.max() < math.log(3.3) + 0.05
    # positions are uniform over the valid range: both ends are reached
    assert (top == 0).any() and (top + h == 224).any()


def test_random_erasing_on_batch():
    b, hh, ww = 2000, 32, 32
    x = torch.randn(b, 3, hh, ww, generator=gen(8)) + 10.0  # never 0 by chance
    out = random_erasing(x, gen(9), p=0.5, scale=(0.02, 0.1))
    erased = out == 0
    assert torch.equal(erased[:, 0], erased[:, 1]) and torch.equal(erased[:, 0], erased[:, 2])
    assert torch.equal(out[~erased], x[~erased])
    m = erased[:, 0]
    hit = m.flatten(1).any(1)
    assert abs(hit.float().mean().item() - 0.5) < 0.04
    # each erased region is one full rectangle whose size obeys the scale bounds
    rows, cols = m.any(2), m.any(1)
    h, w = rows.sum(1), cols.sum(1)
    assert torch.equal(m.flatten(1).sum(1), h * w)
    assert _erase_area_bounds(h[hit], w[hit], 0.02, 0.1, hh * ww).all()
    # same boxes as sample_erasing_boxes with the same generator seed
    top, left, bh, bw, apply = sample_erasing_boxes(b, hh, ww, gen(9), p=0.5, scale=(0.02, 0.1))
    assert torch.equal(apply, hit) and torch.equal(bh[hit], h[hit]) and torch.equal(bw[hit], w[hit])


def test_erasing_uint8_value_and_no_fit():
    x = torch.full((50, 3, 16, 16), 7, dtype=torch.uint8)
    out = random_erasing(x, gen(10), p=1.0, scale=(0.05, 0.05), value=(1, 2, 3))
    assert out.dtype == torch.uint8
    m = out[:, 0] != 7
    assert m.flatten(1).any(1).all()
    assert (out[:, 1][m] == 2).all() and (out[:, 2][m] == 3).all()
    # torchvision: when no attempt fits (area = the whole image), nothing is erased
    assert torch.equal(random_erasing(x, gen(10), p=1.0, scale=(1.0, 1.0)), x)


def test_erasing_determinism():
    x = torch.randn(64, 3, 20, 20, generator=gen(11))
    assert torch.equal(random_erasing(x, gen(12)), random_erasing(x, gen(12)))
    assert not torch.equal(random_erasing(x, gen(12), p=1.0), random_erasing(x, gen(13), p=1.0))


# --------------------------------------------------------------------------- pipeline
def test_batch_augment_pipeline():
    cfg = AugmentConfig(flip_or_noise=True, hflip_p=0.5, erasing_p=1.0, erasing_scale=(0.05, 0.05),
                        channel_order="BGR")
    aug = BatchAugment(cfg)
    x = ramp_u8(16, 24, 24)
    a, b = aug(x, gen(14)), aug(x, gen(14))
    assert a.dtype == torch.float32 and a.shape == x.shape and torch.equal(a, b)
    assert ((a == 0).flatten(1).any(1)).all()  # p = 1 erasing
    assert torch.equal(aug(x, train=False), normalize(x, channel_order="BGR"))
    # works on float input as well
    assert aug(x.float() / 255, gen(14)).shape == x.shape
