"""Faces followed between detections in a video: a full-frame detection every ``every`` frames,
and in between a YuNet run on a small region around each face's last box.

On a 640x480 frame the bundled detector costs one full-frame YuNet run and 5 landmark-refinement
passes per face (``poster.face.detect.YuNetDetector``; ~60 CPU-ms for one face, about as much as
the model itself); following a face costs one YuNet run on its region shrunk to at most
``region_side`` pixels and ``refine`` refinement passes (~10 CPU-ms with the defaults;
docs/benchmarks.md).  The landmarks still come from YuNet on the face itself, not from motion, so
alignment stays that of a detection: predictions stay close to per-frame detection (measured in
docs/benchmarks.md, checked in tests/test_timeline.py).

A face that cannot be found in its region (occluded, gone, moved too fast) triggers a full-frame
detection on that same frame, and so does a frame with no face followed (a new face appears at
the next full detection, at most ``every - 1`` frames late while other faces are followed).
A ``FollowingDetector`` holds the state of one video: frames must come in order, from one thread.
"""

from __future__ import annotations

import copy
from typing import Any

import cv2
import numpy as np

from ..face.detect import Face, YuNetDetector
from .tracking import box_iou

__all__ = ["FollowingDetector", "following_detector", "recognizer_following"]

_MARGIN = 0.6  # the region reaches this many face sizes beyond the box on each side
_MIN_IOU = 0.2  # the face found in the region must overlap the last box this much
_DUPLICATE_IOU = 0.5  # two followed faces overlapping more are one face


class FollowingDetector:
    """``detect(frame)`` like ``detector``'s, with full detections only every ``every`` frames."""

    def __init__(self, detector: YuNetDetector, every: int = 5, refine: int = 1, region_side: int = 256) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if refine < 0:
            raise ValueError(f"refine must be >= 0, got {refine}")
        self.detector = detector
        self.every = int(every)
        self.refine = int(refine)
        self.region_side = int(region_side)
        # the same network and thresholds, without its refinement (run here on the full frame instead)
        self._region = YuNetDetector(detector.model_path, score_threshold=detector.score_threshold, nms=detector.nms,
                                     max_side=None, refine=0, engine=detector.engine)
        self._faces: list[Face] = []
        self._since_full = 0
        self.full_detections = 0
        self.followed = 0

    @property
    def name(self) -> str:
        return f"{getattr(self.detector, 'name', 'detector')}+follow"

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        if self._faces and self._since_full < self.every:
            followed = [self._follow(image_bgr, face) for face in self._faces]
            if all(f is not None for f in followed):
                self._since_full += 1
                self.followed += 1
                self._faces = _without_duplicates(followed)
                return list(self._faces)
        self._faces = self.detector.detect(image_bgr)
        self._since_full = 1
        self.full_detections += 1
        return list(self._faces)

    def _follow(self, image: np.ndarray, face: Face) -> Face | None:
        h, w = image.shape[:2]
        x, y, bw, bh = face.box
        side = max(bw, bh)
        x0, y0 = max(0, int(x - _MARGIN * side)), max(0, int(y - _MARGIN * side))
        x1, y1 = min(w, int(np.ceil(x + bw + _MARGIN * side))), min(h, int(np.ceil(y + bh + _MARGIN * side)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        region = image[y0:y1, x0:x1]
        scale = min(1.0, self.region_side / max(x1 - x0, y1 - y0))
        if scale < 1.0:
            region = cv2.resize(region, (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))),
                                interpolation=cv2.INTER_AREA)
        best, best_iou = None, _MIN_IOU
        for found in self._region.detect(np.ascontiguousarray(region)):
            found = Face((found.box[0] / scale + x0, found.box[1] / scale + y0, found.box[2] / scale,
                          found.box[3] / scale), found.landmarks / np.float32(scale) + np.float32([x0, y0]),
                         found.score)
            iou = box_iou(found.box, face.box)
            if iou >= best_iou:
                best, best_iou = found, iou
        if best is None or best.score < self.detector.score_threshold:
            return None
        landmarks = best.landmarks
        if self.refine:
            landmarks = self.detector.refine_landmarks(image, landmarks, passes=self.refine)
        return Face(best.box, landmarks, best.score)

    def __repr__(self) -> str:
        return f"FollowingDetector({self.detector!r}, every={self.every}, refine={self.refine})"


def _without_duplicates(faces: list[Face]) -> list[Face]:
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: -f.score):
        if all(box_iou(face.box, k.box) <= _DUPLICATE_IOU for k in kept):
            kept.append(face)
    return sorted(kept, key=lambda f: (f.box[0], f.box[1]))


def following_detector(detector: Any, every: int, refine: int = 1) -> Any:
    """A ``FollowingDetector`` around ``detector`` when it can follow faces (YuNet) and ``every > 1``;
    otherwise ``detector`` itself (every frame gets a full detection)."""
    if every <= 1 or not isinstance(detector, YuNetDetector):
        return detector
    return FollowingDetector(detector, every=every, refine=refine)


def recognizer_following(recognizer: Any, every: int, refine: int = 1) -> tuple[Any, FollowingDetector | None]:
    """A view of ``recognizer`` (a shallow copy: same model, same settings) whose detector follows
    faces between detections, and that detector; ``(recognizer, None)`` when it cannot follow.
    A copy, because the following state belongs to one video while the recogniser may serve others."""
    detector = getattr(recognizer, "detector", None)
    follower = following_detector(detector, every, refine) if detector is not None else None
    if follower is None or follower is detector:
        return recognizer, None
    view = copy.copy(recognizer)
    view.detector = follower
    return view, follower
