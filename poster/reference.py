"""The reference (original-equivalent) training input pipeline, in one place.

What the original POSTER training scripts do to every image, one image at a time on the CPU
inside ``DataLoader`` workers: decode with OpenCV in the model's channel order -> (V1) flip or
Gaussian noise on the decoded uint8 image -> PIL bilinear resize to 224 -> random horizontal
flip -> ToTensor/Normalize -> random erasing.  ``poster benchmark`` times it against the batched
on-device pipeline (``poster.train.cache``/``augment``), and ``tests/test_reference.py`` checks
that it is the evaluation transform plus exactly these augmentations.

Every step is the package's own implementation of that idea (``poster.data.transforms`` and
``poster.train.augment``), applied per image; randomness comes from each worker's global torch
RNG, as the original drew from its workers' global generators.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .data.transforms import load_image, resize_square, to_normalized_tensor
from .train.augment import AugmentConfig, flip_or_noise, random_erasing

__all__ = ["ReferenceTrainDataset"]


class ReferenceTrainDataset(Dataset):
    """``(normalised float32 [3, size, size], label)`` per record, augmented as ``config`` says
    (``AugmentConfig.from_recipe(recipe, input_order=recipe.channel_order)``)."""

    def __init__(self, records: Sequence[tuple[str, int]], config: AugmentConfig, size: int = 224):
        self.records = list(records)
        self.config = config
        self.size = size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        c = self.config
        path, label = self.records[index]
        image = load_image(path, c.channel_order)
        if c.flip_or_noise:  # on the decoded image, before the resize, as V1 did
            batch = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
            image = flip_or_noise(batch, p=c.flip_or_noise_p, noise_std=c.noise_std)[0].permute(1, 2, 0).numpy()
        image = resize_square(np.ascontiguousarray(image), self.size)
        if torch.rand(()) < c.hflip_p:
            image = image[:, ::-1]
        t = to_normalized_tensor(image, c.mean, c.std)
        if c.erasing_p > 0:
            t = random_erasing(t[None], p=c.erasing_p, scale=c.erasing_scale, ratio=c.erasing_ratio,
                               value=c.erasing_value)[0]
        return t, label
