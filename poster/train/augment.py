"""Batched, on-device training augmentation of the POSTER recipes (docs/faithfulness.md#training).

Every function takes an image batch ``[B, 3, H, W]`` on any device, uint8 (0..255) or float,
and an optional ``torch.Generator`` for reproducibility.  All random numbers for a batch are
drawn in a fixed number of calls whose shapes depend only on the batch shape (never on the
data or on earlier outcomes), so the same generator state gives the same result.  Random
numbers are drawn on the generator's device and moved to the images' device: give a
generator on the images' device (``torch.Generator(device="cuda")``) to avoid a host copy of
the Gaussian noise.  Without a generator, the global RNG of the images' device is used.
There is no per-image Python loop; per-sample choices are masks.

Pipeline of the reference, and what this module does with it:

* V1 (``train.py``): flip-or-noise on the *original* uint8 image -> RandomHorizontalFlip(0.5)
  -> Resize(224) -> ToTensor -> Normalize -> RandomErasing(0.5, (0.02, 0.1)).
* V2 (``main.py``): Resize(224) -> RandomHorizontalFlip -> ToTensor -> Normalize ->
  RandomErasing((0.5, (0.02, 0.1)) for RAF-DB, (1.0, (0.05, 0.05)) for AffectNet/CAER-S).

Resizing is the data loader's job; these functions work at whatever resolution they are
given.  A horizontal flip commutes with a (mirror-symmetric) resize, so flipping after the
resize is equivalent.  The Gaussian noise does not commute: the reference adds it at the
original resolution (100x100 for RAF-DB) and then upsamples, which smooths it; here it is
added per pixel at the given resolution.  Random-erasing's ``scale`` is a fraction of the
image *area*, so it is resolution-independent (only the rounding of the rectangle's sides
to whole pixels depends on the resolution).

Float images are taken to be on the scale ``[0, max_value]`` (default 1.0, i.e. ToTensor's
output) for flip-or-noise, and ``[0, 1]`` for :func:`normalize`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from poster.data.transforms import normalize_levels
from poster.meta import IMAGENET_MEAN, IMAGENET_STD, check_channel_order

__all__ = [
    "NOISE_STD",
    "flip_or_noise",
    "random_hflip",
    "normalize",
    "sample_erasing_boxes",
    "random_erasing",
    "AugmentConfig",
    "BatchAugment",
]

NOISE_STD = math.sqrt(30.0)  # the reference draws N(0, var=30) in uint8 units


def _check_batch(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected an image batch [B, C, H, W], got shape {tuple(images.shape)}")


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float32 of ``shape`` from ``generator``, on ``device``."""
    src = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=src).to(device)


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    src = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=src).to(device)


def _bmask(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


# --------------------------------------------------------------------------- V1 flip-or-noise
def add_noise_levels(levels: torch.Tensor, noise: torch.Tensor, noise_std: float) -> torch.Tensor:
    """Float 0..255 levels plus ``noise * noise_std``, clipped to [0, 255] and truncated to whole
    levels: the reference's ``uint8(clip(image + N(0, std^2)))`` without leaving float."""
    return (levels + noise * noise_std).clamp_(0.0, 255.0).floor_()


def flip_or_noise(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    p: float = 0.5,
    noise_std: float = NOISE_STD,
    max_value: float | None = None,
) -> torch.Tensor:
    """V1's first augmentation: with probability ``p`` per sample, either (50/50) flip the image
    horizontally or add Gaussian noise ``N(0, noise_std^2)`` (in 0..255 units), clip to
    [0, 255] and truncate to whole levels (``uint8`` cast).  Returns the input's dtype.

    For float input on ``[0, max_value]`` (default 1.0) the noise is scaled by ``max_value/255``
    and the result truncated to the ``max_value/255`` grid, so ``flip_or_noise(u8) / 255`` and
    ``flip_or_noise(u8 / 255)`` agree (up to float rounding at level boundaries).
    """
    _check_batch(images)
    b, device = images.shape[0], images.device
    u = _rand((b, 2), generator, device)
    noise = _randn(images.shape, generator, device)
    apply = u[:, 0] < p
    do_flip = apply & (u[:, 1] < 0.5)
    do_noise = apply & ~(u[:, 1] < 0.5)
    if images.dtype == torch.uint8:
        noisy = add_noise_levels(images.float(), noise, noise_std).to(torch.uint8)
    elif images.is_floating_point():
        mv = 1.0 if max_value is None else float(max_value)
        noisy = (add_noise_levels(images.float() * (255.0 / mv), noise, noise_std) * (mv / 255.0)).to(images.dtype)
    else:
        raise TypeError(f"flip_or_noise needs uint8 or floating images, got {images.dtype}")
    out = torch.where(_bmask(do_noise), noisy, images)
    return torch.where(_bmask(do_flip), images.flip(-1), out)


# --------------------------------------------------------------------------- flip
def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Flip each sample left-right with probability ``p`` (RandomHorizontalFlip)."""
    _check_batch(images)
    flip = _rand((images.shape[0],), generator, images.device) < p
    return torch.where(_bmask(flip), images.flip(-1), images)


# --------------------------------------------------------------------------- normalise
def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    input_order: str = "RGB",
    channel_order: str = "RGB",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """ToTensor + Normalize on a batch: uint8 is divided by 255 (float is taken as [0, 1]);
    channels are reversed when ``input_order != channel_order`` (RGB <-> BGR); then
    ``(x - mean[c]) / std[c]`` with ``mean``/``std`` in the *output* channel order, as the
    reference applies them (V1 RAF-DB: channel 0 is blue and gets mean 0.485)."""
    _check_batch(images)
    check_channel_order(input_order, "input_order")
    check_channel_order(channel_order)
    x = images.to(dtype)
    if input_order != channel_order:
        x = x.flip(1)
    return normalize_levels(x, mean, std, 255.0 if images.dtype == torch.uint8 else 1.0)


# --------------------------------------------------------------------------- random erasing
def sample_erasing_boxes(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    max_attempts: int = 10,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rectangles of torchvision's RandomErasing, for a whole batch at once.

    Per sample: erase with probability ``p``; up to ``max_attempts`` tries of
    ``area = H*W*U(scale)``, ``aspect = exp(U(log ratio))``, ``h = round(sqrt(area*aspect))``,
    ``w = round(sqrt(area/aspect))``; the first try with ``h < H`` and ``w < W`` wins and its
    top-left corner is uniform over the valid positions; if no try fits, nothing is erased.
    Returns ``(top, left, h, w, apply)``: int64 tensors ``[B]`` and a bool mask ``[B]``.
    """
    if not (0.0 <= scale[0] <= scale[1]):
        raise ValueError(f"erasing scale must satisfy 0 <= min <= max, got {scale}")
    if not (0.0 < ratio[0] <= ratio[1]):
        raise ValueError(f"erasing ratio must satisfy 0 < min <= max, got {ratio}")
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    device = torch.device(device)
    u = _rand((batch, max_attempts, 2), generator, device)
    pos = _rand((batch, 2), generator, device)
    coin = _rand((batch,), generator, device)
    area = float(height * width)
    erase_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lr0 + (lr1 - lr0) * u[..., 1])
    hs = torch.round(torch.sqrt(erase_area * aspect)).long()
    ws = torch.round(torch.sqrt(erase_area / aspect)).long()
    fits = (hs < height) & (ws < width)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting attempt
    h = hs.gather(1, first).squeeze(1)
    w = ws.gather(1, first).squeeze(1)
    apply = (coin < p) & fits.any(dim=1)
    h = torch.where(apply, h, torch.zeros_like(h))
    w = torch.where(apply, w, torch.zeros_like(w))
    top = torch.floor(pos[:, 0] * (height - h + 1).to(pos.dtype)).long()
    left = torch.floor(pos[:, 1] * (width - w + 1).to(pos.dtype)).long()
    top = torch.minimum(top, height - h)
    left = torch.minimum(left, width - w)
    return top, left, h, w, apply


def random_erasing(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float | Sequence[float] = 0.0,
    max_attempts: int = 10,
) -> torch.Tensor:
    """RandomErasing with torchvision's semantics (see :func:`sample_erasing_boxes`) on a batch:
    the rectangle is set to ``value`` (a scalar or one value per channel) in every channel.
    In the recipes it runs after normalisation, so the patch is 0 in normalised units."""
    _check_batch(images)
    b, _, hgt, wid = images.shape
    top, left, h, w, _ = sample_erasing_boxes(
        b, hgt, wid, generator, p=p, scale=scale, ratio=ratio, max_attempts=max_attempts, device=images.device
    )
    rows = torch.arange(hgt, device=images.device).view(1, -1)
    cols = torch.arange(wid, device=images.device).view(1, -1)
    in_r = (rows >= top.view(-1, 1)) & (rows < (top + h).view(-1, 1))
    in_c = (cols >= left.view(-1, 1)) & (cols < (left + w).view(-1, 1))
    mask = (in_r.unsqueeze(2) & in_c.unsqueeze(1)).unsqueeze(1)  # [B, 1, H, W]
    if isinstance(value, (int, float)):
        return images.masked_fill(mask, value)
    v = torch.as_tensor(tuple(value), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return torch.where(mask, v, images)


# --------------------------------------------------------------------------- whole pipeline
def to_grey3_uint8(images: torch.Tensor, order: str) -> torch.Tensor:
    """A uint8 batch [B,3,H,W] in ``order`` made grey (3 equal channels) like OpenCV's
    ``cvtColor(..., COLOR_RGB2GRAY / COLOR_BGR2GRAY)``, which ``InputConfig.grayscale`` uses in the
    evaluation transform: ITU-R 601 luma in 15-bit fixed point (bit-identical to OpenCV 5.0; other
    OpenCV builds may round differently by one grey level)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 batch [B,3,H,W], got {images.dtype} {tuple(images.shape)}")
    r, g, b = (images[:, i].to(torch.int32) for i in ((0, 1, 2) if order == "RGB" else (2, 1, 0)))
    grey = (r * 9798 + g * 19235 + b * 3735 + 16384) >> 15
    return grey.to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True)
class AugmentConfig:
    """Settings of the training pipeline flip-or-noise -> hflip -> normalise -> erase."""

    flip_or_noise: bool = False
    flip_or_noise_p: float = 0.5
    noise_std: float = NOISE_STD
    hflip_p: float = 0.5
    erasing_p: float = 0.5
    erasing_scale: tuple[float, float] = (0.02, 0.1)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)
    erasing_value: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_order: str = "RGB"  # channel order of the images handed in
    channel_order: str = "RGB"  # channel order the model expects
    grayscale: bool = False  # turn images grey first (recipes for grey datasets; as the eval transform does)

    @classmethod
    def from_recipe(cls, recipe: Any, input_order: str = "RGB") -> "AugmentConfig":
        """Build from a :class:`poster.train.recipes.Recipe` (duck-typed): every field of this
        config that the recipe also has is taken from it, so no field is restated here."""
        shared = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(cls) if hasattr(recipe, f.name)}
        return cls(**shared, input_order=input_order)


class BatchAugment:
    """Callable pipeline: ``BatchAugment(cfg)(images_uint8, generator)`` -> normalised float batch.

    ``train=False`` only normalises (the evaluation transform after resizing)."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None, train: bool = True
    ) -> torch.Tensor:
        c = self.config
        x = to_grey3_uint8(images, c.input_order) if c.grayscale else images
        if train and c.flip_or_noise:
            x = flip_or_noise(x, generator, p=c.flip_or_noise_p, noise_std=c.noise_std)
        if train and c.hflip_p > 0:
            x = random_hflip(x, generator, p=c.hflip_p)
        x = normalize(x, c.mean, c.std, input_order=c.input_order, channel_order=c.channel_order)
        if train and c.erasing_p > 0:
            x = random_erasing(x, generator, p=c.erasing_p, scale=c.erasing_scale, ratio=c.erasing_ratio,
                               value=c.erasing_value)
        return x

    def __repr__(self) -> str:
        return f"BatchAugment({self.config})"
