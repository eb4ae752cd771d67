"""Small synthetic datasets and runs shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_stripes_dataset(root: Path, per_class: int = 8, size: int = 48, seed: int = 0) -> Path:
    """Folder layout with two visually distinct classes (horizontal vs vertical stripes) + noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", max(2, per_class // 2))):
        for cls in ("horizontal", "vertical"):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                stripes = ((np.arange(size) // 4) % 2 * 180 + 40).astype(np.uint8)
                img = np.tile(stripes[:, None], (1, size)) if cls == "horizontal" else np.tile(stripes[None, :], (size, 1))
                noisy = np.clip(img.astype(int) + rng.integers(-30, 30, img.shape), 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f"{i:03d}.png"), noisy)
    return root
