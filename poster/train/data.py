"""Training data: uint8 image batches, deterministic resumable sampling, held-out validation splits.

Workers only decode and resize (to the model's input size, PIL bilinear like the reference);
augmentation and normalisation run batched on the training device (``poster.train.augment``).
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..data import load_image
from ..data.transforms import resize_square


class UInt8ImageDataset(Dataset):
    """``(uint8 tensor [3,S,S] in ``channel_order``, label)`` for a list of records."""

    def __init__(self, records: Sequence[tuple[str, int]], size: int, channel_order: str):
        self.records = list(records)
        self.size = size
        self.channel_order = channel_order

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.records[index]
        image = load_image(path, self.channel_order)
        if image.shape[0] != self.size or image.shape[1] != self.size:
            image = resize_square(image, self.size)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label


def stratified_split(targets: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held-out) with ``fraction`` of every class held out (at least one per class
    that has two or more samples), reproducible from ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets)
    train, held = [], []
    for cls in np.unique(targets):
        idx = np.flatnonzero(targets == cls)
        rng.shuffle(idx)
        n_held = min(len(idx) - 1, max(1, round(len(idx) * fraction))) if len(idx) > 1 else 0
        held.extend(idx[:n_held].tolist())
        train.extend(idx[n_held:].tolist())
    return sorted(train), sorted(held)


class EpochSampler(Sampler[int]):
    """Deterministic, resumable, distributed sampling.

    The order of epoch ``e`` depends only on ``(seed, e)``: shuffled, or drawn with replacement
    by ``weights`` (class-balanced sampling: weight 1/count of the label).  With ``world_size``
    > 1 the order is padded to a multiple of ``world_size`` and rank ``r`` takes every
    ``world_size``-th index starting at ``r``: ranks see disjoint parts of one global order, so
    the union of their batches is the single-process batch.  ``start`` skips the first indices
    of this rank's share (resuming inside an epoch).
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, weights: Sequence[float] | None = None,
                 rank: int = 0, world_size: int = 1):
        self.n = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def global_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        padded = math.ceil(self.n / self.world_size) * self.world_size
        return order + order[: padded - self.n]

    def __iter__(self) -> Iterator[int]:
        mine = self.global_order()[self.rank::self.world_size]
        return iter(mine[self.start:])

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size) - self.start


def balanced_weights(targets: Sequence[int]) -> list[float]:
    """Per-sample weight 1/count(label) (the original ImbalancedDatasetSampler)."""
    counts = np.bincount(np.asarray(targets))
    return [1.0 / counts[t] for t in targets]
