"""Faces followed between detections in a video: a full-frame detection every ``every`` frames,
and in between one YuNet run per face on an upright view of where it was.

On a 640x480 frame a full detection by the bundled detector costs one YuNet run on the frame
(~16 CPU-ms) and 5 landmark-refinement passes per face (~8 CPU-ms each: ~55 CPU-ms for one face,
more than the model; ``poster.face.detect.YuNetDetector``).  Following a face costs one
``YuNetDetector.locate`` call: the frame warped with the similarity transform of the face's last
landmarks onto a ``canvas`` x ``canvas`` square (the face ``canvas / 2`` pixels wide, upright), one
YuNet run there, and the face nearest the centre mapped back (~8 CPU-ms); its box is the last
one moved and scaled with the landmarks.  The view is the refinement's own (384 pixels, the face
192): YuNet's landmarks shift with the face's size, so on a 256-pixel view (~5 CPU-ms) a still
face's landmarks came out 2-5 pixels away from its detection's, against 0.2-1.8 on this one.
That call *is* a refinement pass started from the previous frame's landmarks, so a followed face
stays aligned like a detected one: its tilt is carried from frame to frame instead of being
re-estimated from scratch.  The periodic full detection finds new faces; the faces it finds where
a followed face was get ``refine`` passes from the followed landmarks (cheap), new faces the
detector's full refinement.  Predictions stay close to per-frame detection (measured in
docs/benchmarks.md, checked in tests/test_timeline.py).

A face that cannot be found on its view (occluded, gone, moved too fast) triggers a full-frame
detection on that same frame, and so does a frame with no face followed (a new face appears at
the next full detection, at most ``every - 1`` frames late while other faces are followed).
A ``FollowingDetector`` holds the state of one video: frames must come in order, from one thread.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..face.align import similarity_transform, transform_points
from ..face.detect import Face, YuNetDetector
from .tracking import box_iou

__all__ = ["FollowingDetector", "following_detector", "recognizer_following"]

_SAME_FACE_IOU = 0.3  # a detected face overlapping a followed one this much is that face
_MIN_IOU = 0.2  # a followed face found again must overlap its last box this much
_DUPLICATE_IOU = 0.5  # two followed faces overlapping more are one face


class FollowingDetector:
    """``detect(frame)`` like ``detector``'s, with full detections only every ``every`` frames.

    ``refine``: ``locate`` passes for a face found again by a full detection where a face was
    followed (new faces get the detector's own refinement); ``canvas``: side of the upright view
    a followed face is looked for on (the face is half as wide)."""

    def __init__(self, detector: YuNetDetector, every: int = 5, refine: int = 1, canvas: int = 384) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if refine < 0:
            raise ValueError(f"refine must be >= 0, got {refine}")
        if canvas < 64:
            raise ValueError(f"canvas must be at least 64 pixels, got {canvas}")
        self.detector = detector
        self.every = int(every)
        self.refine = int(refine)
        self.canvas = int(canvas)
        # the same network and thresholds without its refinement: known faces need less of it
        self._unrefined = copy.copy(detector)
        self._unrefined.refine = 0
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
        self._faces = self._full_detection(image_bgr)
        self._since_full = 1
        self.full_detections += 1
        return list(self._faces)

    def _full_detection(self, image: np.ndarray) -> list[Face]:
        """Every face in the frame; those where a face was followed keep its landmarks' tilt."""
        faces = []
        for found in self._unrefined.detect(image):
            known = max(self._faces, key=lambda f: box_iou(f.box, found.box), default=None)
            landmarks = None
            if known is not None and known.landmarks is not None and box_iou(known.box, found.box) >= _SAME_FACE_IOU:
                landmarks = self._relocated(image, known.landmarks) if self.refine else found.landmarks
            if landmarks is None and self.detector.refine:  # a new face (or one not found again): in full
                landmarks = self.detector.refine_landmarks(image, found.landmarks)
            faces.append(Face(found.box, found.landmarks if landmarks is None else landmarks, found.score))
        return faces

    def _relocated(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
        """``refine`` passes from a followed face's landmarks: the last estimate is the answer."""
        for _ in range(self.refine):
            found = self.detector.locate(image, landmarks, self.canvas, self.canvas // 2)
            if found is None:
                return None
            landmarks = found.landmarks
        return landmarks

    def _follow(self, image: np.ndarray, face: Face) -> Face | None:
        if face.landmarks is None:
            return None
        found = self.detector.locate(image, face.landmarks, self.canvas, self.canvas // 2)
        if found is None or found.score < self.detector.score_threshold:
            return None
        box = _moved_box(face.box, face.landmarks, found.landmarks)
        if box_iou(box, face.box) < _MIN_IOU:
            return None
        return Face(box, found.landmarks, found.score)

    def __repr__(self) -> str:
        return f"FollowingDetector({self.detector!r}, every={self.every}, refine={self.refine}, canvas={self.canvas})"


def _moved_box(box: tuple[float, float, float, float], before: np.ndarray, after: np.ndarray) -> tuple[float, ...]:
    """``box`` moved and scaled as the landmarks moved from ``before`` to ``after``: a followed face
    keeps the box a full detection gave it (YuNet's boxes on the upright view come out a few pixels
    larger or smaller, so annotated boxes would jump at every full detection)."""
    m = similarity_transform(before, after)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    x, y, w, h = box
    cx, cy = transform_points(np.array([[x + w / 2, y + h / 2]]), m)[0]
    return (cx - w * scale / 2, cy - h * scale / 2, w * scale, h * scale)


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
