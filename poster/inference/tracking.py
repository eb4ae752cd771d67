"""Faces followed across video frames: stable track ids (``FaceTracker``), probabilities smoothed
per track (``ProbabilitySmoother``), and both together as ``EmaTracker``.

A track id survives a short occlusion: a face that reappears within ``max_gap_s`` seconds near where
its track was last seen (centre within a reach that grows with the gap, similar size) gets the same
id back.  Matching is greedy: overlapping boxes (IoU) first, then nearby boxes of lost tracks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .results import FaceResult

__all__ = ["box_iou", "FaceTracker", "ProbabilitySmoother", "EmaTracker", "VideoTracker", "with_probabilities"]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    ix = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    box: tuple[float, float, float, float]
    time: float  # when it was last seen, seconds


def _proximity(box: Sequence[float], track: _Track, gap_s: float, reach_per_s: float) -> float:
    """How close ``box`` is to where ``track`` was last seen, in (0, 1]; 0 when out of reach or
    of another size.  The reach (in face sizes) grows with the time the face was away."""
    bx, by, bw, bh = box
    tx, ty, tw, th = track.box
    size = math.sqrt(max(tw * th, 1e-9))
    ratio = math.sqrt(max(bw * bh, 1e-9)) / size
    if not 2 / 3 <= ratio <= 1.5:
        return 0.0
    distance = math.hypot(bx + bw / 2 - tx - tw / 2, by + bh / 2 - ty - th / 2) / size
    reach = min(1.0 + reach_per_s * gap_s, 3.0)
    return max(0.0, 1.0 - distance / reach)


class FaceTracker:
    """Track ids for the faces of consecutive frames.

    ``min_iou``: boxes overlapping a track's last box at least this much continue it; ``max_gap_s``:
    a track unseen for longer ends (its face gets a new id when it comes back); ``reach_per_s``: how
    far (face sizes per second away, from one face size at once, at most 3) a lost face may have
    moved and still be recognised as the same.  Ids are 0, 1, 2, ... in order of first appearance.
    """

    def __init__(self, min_iou: float = 0.3, max_gap_s: float = 2.0, reach_per_s: float = 1.5) -> None:
        if max_gap_s < 0:
            raise ValueError(f"max_gap_s must be >= 0, got {max_gap_s}")
        self.min_iou = float(min_iou)
        self.max_gap_s = float(max_gap_s)
        self.reach_per_s = float(reach_per_s)
        self.tracks: dict[int, _Track] = {}
        self._next = 0

    def assign(self, boxes: Sequence[Sequence[float]], time_s: float) -> list[int]:
        """The track id of each box seen at ``time_s`` (seconds, non-decreasing)."""
        self.tracks = {tid: t for tid, t in self.tracks.items() if time_s - t.time <= self.max_gap_s}
        pairs = []
        for i, box in enumerate(boxes):
            for tid, track in self.tracks.items():
                iou = box_iou(box, track.box)
                if iou >= self.min_iou:
                    pairs.append((1.0 + iou, i, tid))  # overlap beats proximity
                else:
                    near = _proximity(box, track, time_s - track.time, self.reach_per_s)
                    if near > 0:
                        pairs.append((near, i, tid))
        assigned: dict[int, int] = {}
        for _, i, tid in sorted(pairs, reverse=True):
            if i not in assigned and tid not in assigned.values():
                assigned[i] = tid
        ids = []
        for i, box in enumerate(boxes):
            tid = assigned.get(i)
            if tid is None:
                tid, self._next = self._next, self._next + 1
            self.tracks[tid] = _Track(tuple(float(v) for v in box), float(time_s))
            ids.append(tid)
        return ids


class ProbabilitySmoother:
    """Exponential moving average of each track's probabilities: ``alpha * previous + (1 - alpha) * new``
    (a new track starts from its first probabilities; a track that comes back goes on from its state)."""

    def __init__(self, alpha: float) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.state: dict[int, np.ndarray] = {}

    def update(self, track: int, probs: np.ndarray) -> np.ndarray:
        """The track's new state (the smoother's own array, updated in place at the next call:
        copy it to keep it; one array per track, not one per frame, for a flat native heap)."""
        probs = np.asarray(probs, dtype=np.float64)
        state = self.state.get(track)
        if state is None:
            state = self.state[track] = probs.copy()
        else:
            state *= self.alpha
            state += (1.0 - self.alpha) * probs
        return state

    def forget(self, keep: set[int]) -> None:
        self.state = {t: v for t, v in self.state.items() if t in keep}


def with_probabilities(face: FaceResult, probs: np.ndarray, class_names: Sequence[str], track: int) -> FaceResult:
    """``face`` with other probabilities (and the label they give) and its track id."""
    best = int(np.argmax(probs))
    return FaceResult(face.box, face.landmarks, face.score, {c: float(v) for c, v in zip(class_names, probs)},
                      class_names[best], float(probs[best]), face.index, track)


class EmaTracker:
    """Track ids (``FaceTracker``, time counted in frames) and smoothed probabilities in one step:
    ``update(faces)`` returns the faces with their track and their smoothed probabilities."""

    def __init__(self, alpha: float, class_names: Sequence[str], min_iou: float = 0.3, max_age: int = 5) -> None:
        self.smoother = ProbabilitySmoother(alpha)
        self.alpha = self.smoother.alpha
        self.class_names = tuple(class_names)
        self.ids = FaceTracker(min_iou=min_iou, max_gap_s=max_age)
        self._frame = 0

    def update(self, faces: list[FaceResult]) -> list[FaceResult]:
        ids = self.ids.assign([f.box for f in faces], self._frame)
        self._frame += 1
        out = []
        for face, tid in zip(faces, ids):
            probs = self.smoother.update(tid, [face.probabilities[c] for c in self.class_names])
            out.append(with_probabilities(face, probs, self.class_names, tid))
        self.smoother.forget(set(self.ids.tracks))
        return out


class VideoTracker:
    """Per frame of a video: each face's track id and its smoothed probabilities.

    ``update(faces, time_s)`` returns the faces with ``track`` set (their own probabilities) and,
    for each, the smoothed probabilities (EMA factor ``alpha``)."""

    def __init__(self, class_names: Sequence[str], alpha: float = 0.6, max_gap_s: float = 2.0) -> None:
        self.class_names = tuple(class_names)
        self.ids = FaceTracker(max_gap_s=max_gap_s)
        self.smoother = ProbabilitySmoother(alpha)

    def update(self, faces: Sequence[FaceResult], time_s: float) -> tuple[list[FaceResult], list[np.ndarray]]:
        ids = self.ids.assign([f.box for f in faces], time_s)
        tracked, smoothed = [], []
        for face, tid in zip(faces, ids):
            probs = np.array([face.probabilities[c] for c in self.class_names], dtype=np.float64)
            tracked.append(with_probabilities(face, probs, self.class_names, tid))
            smoothed.append(self.smoother.update(tid, probs))
        self.smoother.forget(set(self.ids.tracks))
        return tracked, smoothed
