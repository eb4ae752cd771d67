"""A synthetic test video with known faces, and poster's video path measured on it (``poster benchmark --video``).

``make_face_video`` pastes a face photo (by default the repository's ``examples/astronaut.jpg``) into
640x480 frames over a textured background: face 0 moves left and right and tilts a little, an
optional face 1 (the mirror image, smaller) moves up and down, and for ``occlusion`` frames a grey
bar hides face 0 completely, so that its track id must survive the gap.  ``face_boxes`` tells
where each face really is in each frame.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import PosterError

__all__ = ["SyntheticVideo", "make_face_video"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FACE_IMAGE = ROOT / "examples" / "astronaut.jpg"
_HEAD = (30, 230, 140, 320)  # rows, columns of the astronaut's head in examples/astronaut.jpg (512x512)


@dataclass(frozen=True)
class SyntheticVideo:
    path: Path
    frames: int
    fps: float
    size: tuple[int, int]
    faces: int
    occluded: tuple[int, int]  # [first, last) frame where face 0 is hidden


def _background(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 90 + 40 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + 0.08 * xx
    return np.clip(np.stack([base, base * 0.9 + 12, base * 1.1 - 10], axis=2), 0, 255).astype(np.uint8)


def _paste(frame: np.ndarray, head: np.ndarray, x: int, y: int, angle: float) -> tuple[int, int, int, int]:
    hh, hw = head.shape[:2]
    m = cv2.getRotationMatrix2D((hw / 2, hh / 2), angle, 1.0)
    patch = cv2.warpAffine(head, m, (hw, hh), borderMode=cv2.BORDER_REPLICATE)
    frame[y:y + hh, x:x + hw] = patch
    return x, y, hw, hh


def make_face_video(path: str | os.PathLike, frames: int = 100, fps: float = 25.0, size: tuple[int, int] = (640, 480),
                    faces: int = 1, occlusion: tuple[int, int] | None = None,
                    face_image: str | os.PathLike | None = None) -> SyntheticVideo:
    """Write the video (MJPEG ``.avi``, which every OpenCV build writes and reads back exactly
    enough, or ``.mp4`` with ``mp4v`` when ``path`` says so) and describe it.  ``occlusion``:
    ``(first, last)`` frames where face 0 is hidden (default: none)."""
    image = cv2.imread(str(face_image or DEFAULT_FACE_IMAGE))
    if image is None:
        raise PosterError(f"cannot read the face image {face_image or DEFAULT_FACE_IMAGE}")
    r0, r1, c0, c1 = _HEAD if image.shape[:2] == (512, 512) else (0, image.shape[0], 0, image.shape[1])
    head = image[r0:r1, c0:c1]
    scale = min(size) / 480 * 200 / head.shape[0]
    head = cv2.resize(head, (round(head.shape[1] * scale), round(head.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    second = cv2.resize(head[:, ::-1], None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    path = Path(path)
    fourcc = "mp4v" if path.suffix.lower() == ".mp4" else "MJPG"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise PosterError(f"cannot write {path} ({fourcc})")
    background = _background(size)
    w, h = size
    hidden = occlusion or (-1, -1)
    try:
        for i in range(frames):
            frame = background.copy()
            phase = 2 * math.pi * i / max(frames, 1)
            x = int((w * 0.35 if faces > 1 else w / 2) - head.shape[1] / 2 + w * 0.12 * math.sin(phase))
            y = int(h / 2 - head.shape[0] / 2 + h * 0.03 * math.sin(2 * phase))
            bx, by, bw, bh = _paste(frame, head, x, y, 8.0 * math.sin(3 * phase))
            if faces > 1:
                y2 = int(h / 2 - second.shape[0] / 2 + h * 0.15 * math.cos(phase))
                _paste(frame, second, int(w * 0.78 - second.shape[1] / 2), y2, 0.0)
            if hidden[0] <= i < hidden[1]:
                frame[max(0, by - 20):by + bh + 20, max(0, bx - 20):bx + bw + 20] = 128
            writer.write(frame)
    finally:
        writer.release()
    return SyntheticVideo(path, frames, float(fps), size, faces, tuple(hidden))
