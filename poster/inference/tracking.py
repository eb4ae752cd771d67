"""Faces followed across video frames, their probabilities smoothed (exponential moving average)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .results import FaceResult


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    ix = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class EmaTracker:
    """Greedy IoU matching of faces between frames; exponential moving average of probabilities."""

    def __init__(self, alpha: float, class_names: Sequence[str], min_iou: float = 0.3, max_age: int = 5) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.class_names = tuple(class_names)
        self.min_iou = min_iou
        self.max_age = max_age
        self.tracks: dict[int, dict[str, Any]] = {}
        self._next = 0

    def update(self, faces: list[FaceResult]) -> list[FaceResult]:
        for t in self.tracks.values():
            t["age"] += 1
        pairs = sorted(((box_iou(f.box, t["box"]), i, tid) for i, f in enumerate(faces)
                        for tid, t in self.tracks.items()), reverse=True)
        assigned: dict[int, int] = {}
        used: set[int] = set()
        for iou, i, tid in pairs:
            if iou < self.min_iou:
                break
            if i in assigned or tid in used:
                continue
            assigned[i] = tid
            used.add(tid)
        out = []
        for i, f in enumerate(faces):
            p = np.array([f.probabilities[c] for c in self.class_names])
            if i in assigned:
                tid = assigned[i]
                p = self.alpha * self.tracks[tid]["probs"] + (1.0 - self.alpha) * p
            else:
                tid = self._next
                self._next += 1
            self.tracks[tid] = {"box": f.box, "probs": p, "age": 0}
            best = int(np.argmax(p))
            out.append(FaceResult(f.box, f.landmarks, f.score, {c: float(v) for c, v in zip(self.class_names, p)},
                                  self.class_names[best], float(p[best]), f.index, tid))
        self.tracks = {tid: t for tid, t in self.tracks.items() if t["age"] <= self.max_age}
        return out
