"""What a prediction returns: one ``FaceResult`` per face, one ``ImageResult`` per image or frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..face.detect import Face


@dataclass
class FaceResult:
    """One face: where it is, and what the model thinks of it.

    ``box`` is (x, y, w, h) in pixels of the source image; ``landmarks`` the 5 (x, y) points in
    YuNet's order (right eye, left eye, nose tip, right and left mouth corner; ``None`` without a
    detector); ``score`` the detection score; ``probabilities`` maps every class name, in the
    model's class order, to its probability; ``label`` / ``confidence`` the most probable class.
    In a video with smoothing, ``probabilities`` are the smoothed ones and ``track`` identifies the
    face across frames.
    """

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...] | None
    score: float
    probabilities: dict[str, float]
    label: str
    confidence: float
    index: int = 0
    track: int | None = None

    def top_k(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes, most probable first."""
        ranked = sorted(self.probabilities.items(), key=lambda kv: -kv[1])
        return ranked[:max(0, int(k))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "face": self.index, "box": [round(v, 2) for v in self.box],
            "landmarks": None if self.landmarks is None else [[round(x, 2), round(y, 2)] for x, y in self.landmarks],
            "score": round(self.score, 5), "label": self.label, "confidence": round(self.confidence, 6),
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            **({"track": self.track} if self.track is not None else {}),
        }


@dataclass
class ImageResult:
    """All faces of one image or video frame.

    ``source``: the path, URL or a description of the input; ``frame``: the frame index in a video
    (``None`` for images); ``error``: why the input could not be processed (then ``faces`` is
    empty); ``image``: the decoded BGR picture, only when asked for (``keep_images=True``).
    """

    source: str
    faces: list[FaceResult] = field(default_factory=list)
    frame: int | None = None
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "frame": self.frame, "num_faces": len(self.faces),
                             "faces": [f.to_dict() for f in self.faces]}
        if self.error is not None:
            d["error"] = self.error
        return d


def face_result(face: Face, probs: np.ndarray, class_names: Sequence[str], index: int,
                      track: int | None = None) -> FaceResult:
    best = int(np.argmax(probs))
    lm = None if face.landmarks is None else tuple((float(x), float(y)) for x, y in face.landmarks)
    return FaceResult(box=tuple(float(v) for v in face.box), landmarks=lm, score=float(face.score),
                      probabilities={name: float(p) for name, p in zip(class_names, probs)},
                      label=class_names[best], confidence=float(probs[best]), index=index, track=track)
